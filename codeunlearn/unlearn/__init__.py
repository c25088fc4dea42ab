"""From corpora to an edit: code statistics, selection of what a topic removes, its budget, guardrail calibration."""
