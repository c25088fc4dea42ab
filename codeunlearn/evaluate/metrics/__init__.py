"""Evaluation metrics: each module holds one family of metrics, each metric a function `(EvalContext, **params)
-> MetricResult` (see `codeunlearn.evaluate.metrics.base`). The evaluation suite (`codeunlearn.evaluate.suite`) looks them up by name."""
