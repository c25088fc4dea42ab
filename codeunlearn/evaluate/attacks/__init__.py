"""Robustness attacks of the evaluation suite (`codeunlearn eval --attacks`): ways an attacker might get forgotten
knowledge back out of an edited model. Each is a metric function `(EvalContext, **params) -> MetricResult` with
group `attack`, and each report row is read against the same attack on the base model.

- `rephrase.rephrased_facts`: the same known_1000 facts asked as cloze, question, multiple choice, few-shot and
  with a topic passage in front.
- `padding.padding_attack`: held-out forget passages behind 0 / 1k / 2k / 4k tokens of unrelated text.
- `latent_probe.latent_probe`: a linear probe on the hidden states that tells forget text from retain text.
- `relearning.relearning_attack`: the forget loss while fine-tuning a copy on a little forget text.
- `bypass.bypass_attack`: the forget loss with the edit switched off (a bottleneck disabled, an export's
  `bottleneck_enabled` False; a stock model has no switch), and for an SAE edit after fine-tuning the layers before
  the SAE through its error term with the clamp active.
- `quantization.quantization_attack`: the forget loss after rounding the decoder layers' linear weights to 8 and
  4 bits (`quantization.quantize_weights_`).
"""
