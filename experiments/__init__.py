"""The notes' experiments and figures, reproduced with jaxnet: `python -m experiments NAME [--out DIR] [--quick]`.

Each experiment is a module with `run(out_dir, quick) -> dict` that writes PNG figures and its
numbers (NAME.json, NAME.md) into out_dir. `--quick` is the reduced form the tests run.
"""

EXPERIMENTS = {
    "slowdown": "experiments.slowdown",  # 1. one sigmoid neuron, quadratic vs cross-entropy (slides 003)
    "softmax_exercise": "experiments.softmax_exercise",  # 2. z = 1, 2, 3 and the 80/20 case (notes 004)
    "information": "experiments.information",  # 4. cross-entropy and entropy curves, gradients through a sigmoid (000)
    "activations": "experiments.activations",  # 6. sigmoid, tanh, ReLU, swish; gradient norm per layer (slides 003)
    "cnn_arithmetic": "experiments.cnn_arithmetic",  # 9. receptive field and the 224x224x3 layer (002)
}
