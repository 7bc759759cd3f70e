"""Finding and reading features: label files (`labels`), their word search (`catalog`, with
`words` and `ranking`), Inspect's and Contrast's results from the engine's readings
(`results`), and feature cards (`cards`: a decoder direction through the unembedding).

Imports: the domain only (and torch). Sits beside the engine: the front end joins the two.
"""
