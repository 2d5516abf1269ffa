"""Demo corpus generation and the end-to-end demo (`python -m llava_ov15.demo`)."""
