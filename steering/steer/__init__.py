"""The steering math and where it runs: edits -> affine tables and the sparse delta (`tables`),
the hooks on the model's layers (`hooks`), what they read for watch, Inspect and rules
(`readings`, `rules`), a prefill's tables (`plan`), the running rows' per-slot tables
(`slot_tables`), and named edit sets (`presets`).

Imports: `steering.sae`, `steering.models` and the domain (`steering.edits`, `requests`,
`errors`). Knows nothing of scheduling, tokenizing or transports.
"""
