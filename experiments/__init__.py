"""The notes' experiments and figures, reproduced with jaxnet.

Run them with `python -m experiments NAME [--out DIR] [--quick]`.

Each experiment is a module with `run(out_dir, quick) -> dict` that writes PNG figures and its
numbers (NAME.json, NAME.md) into out_dir. `--quick` is the reduced form the tests run.
"""

EXPERIMENTS = {
    # 1. one sigmoid neuron, quadratic vs cross-entropy (slides 003)
    "slowdown": "experiments.slowdown",
    # 2. z = 1, 2, 3 and the 80/20 case (notes 004)
    "softmax_exercise": "experiments.softmax_exercise",
    # 3. soft-max outputs in the 2-simplex, before and after training (000, Fig. 1)
    "simplex": "experiments.simplex",
    # 4. cross-entropy and entropy curves, gradients through a sigmoid (000)
    "information": "experiments.information",
    # 5. the schedule of Figure 4; SGD, momentum, scheduled momentum, Adam (000)
    "momentum": "experiments.momentum",
    # 6. sigmoid, tanh, ReLU, swish; gradient norm per layer (slides 003)
    "activations": "experiments.activations",
    # 7. the slides' 784-30-10 / 784-100-10 MLP, both costs (003)
    "nielsen_mlp": "experiments.nielsen_mlp",
    # 8. dropout, weight decay, early termination (000/001)
    "overfitting": "experiments.overfitting",
    # 9. receptive field and the 224x224x3 layer (002)
    "cnn_arithmetic": "experiments.cnn_arithmetic",
    # 10. noisy XOR through a 2-unit hidden layer (004)
    "hidden_geometry": "experiments.hidden_geometry",
}
