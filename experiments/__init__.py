"""The notes' experiments and figures, reproduced with jaxnet: `python -m experiments NAME [--out DIR] [--quick]`.

Each experiment is a module with `run(out_dir, quick) -> dict` that writes PNG figures and its
numbers (NAME.json, NAME.md) into out_dir. `--quick` is the reduced form the tests run.
"""

EXPERIMENTS = {
    "slowdown": "experiments.slowdown",  # 1. one sigmoid neuron, quadratic vs cross-entropy (slides 003)
    "softmax_exercise": "experiments.softmax_exercise",  # 2. z = 1, 2, 3 and the 80/20 case (notes 004)
    "simplex": "experiments.simplex",  # 3. soft-max outputs in the 2-simplex, before and after training (000, Fig. 1)
    "information": "experiments.information",  # 4. cross-entropy and entropy curves, gradients through a sigmoid (000)
    "momentum": "experiments.momentum",  # 5. the schedule of Figure 4; SGD, momentum, scheduled momentum, Adam (000)
    "activations": "experiments.activations",  # 6. sigmoid, tanh, ReLU, swish; gradient norm per layer (slides 003)
    "nielsen_mlp": "experiments.nielsen_mlp",  # 7. the slides' 784-30-10 / 784-100-10 MLP, both costs (003)
    "overfitting": "experiments.overfitting",  # 8. dropout, weight decay, early termination (000/001)
    "cnn_arithmetic": "experiments.cnn_arithmetic",  # 9. receptive field and the 224x224x3 layer (002)
    "hidden_geometry": "experiments.hidden_geometry",  # 10. noisy XOR through a 2-unit hidden layer (004)
}
