"""Finding and reading features: label files (`labels`), their word search (`catalog`, with
`words` and `ranking`), and Inspect's and Contrast's results from the engine's readings
(`results`).

Imports: the domain only (and torch). Sits beside the engine: the front end joins the two.
"""
