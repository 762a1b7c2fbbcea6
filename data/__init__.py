"""Data pipeline: tokenizer, source definitions, formatters, build steps, lineage and the token dataset reader.

The reader (`data.token_dataset.TokenDataset`) is what the trainer imports; the build steps are driven by
`scripts/unified_build/build_unified_dataset.py`.
"""
