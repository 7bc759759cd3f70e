"""Learning steering directions from a served model's activations: the JumpReLU trainer
(`trainer`), its corpus and activations (`corpus`, `harvest`), feature labels (`labelling`),
difference-of-means vectors (`vectors`), and the demo SAE's recipe (`demo_sae`,
`make train-demo-sae`).

Imports: `steering.sae`, `steering.models`, `steering.discovery` (the label file's name) and
`steering.demo` (the demo's model). Nothing at serving time imports it.
"""
