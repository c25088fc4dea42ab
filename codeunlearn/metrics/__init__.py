"""Evaluation metrics: each module holds one family of metrics, each metric a function `(EvalContext, **params)
-> MetricResult` (see `codeunlearn.metrics.base`). The evaluation suite (`codeunlearn.suite`) looks them up by name."""
