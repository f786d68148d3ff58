"""Run the ORIGINAL sparse-dynamic-synapses code on permuted Fashion-MNIST, for the original study
(docs/original_study.md): the reference numbers the toolkit's `MLP_1Layer` / `MLP_1LayerSparse`
are compared with, and their spread over runs.

The original code is not part of this project. Extract it once (outside the repository)::

    git clone https://github.com/Pervasive-AI-Lab/sparse-dynamic-synapses orig
    git -C orig archive 902843e | tar -x -C /tmp/sds          # permuted-MNIST code of 2019-11-08
    git clone https://github.com/numenta/nupic.torch nt
    git -C nt archive f453d54 | tar -x -C /tmp/sds/nupic_torch # nupic.torch of 2019-11-17

and run (one thread, about 15 CPU-minutes a run)::

    python tools/run_original_code.py --src /tmp/sds --data /usr/share/datasets/fashion-mnist \
        --kwta --seed 1 --out orig_kwta_seed1.json

What runs is the original's own ``run_mnist.py`` loop, unchanged: ``SimpleMLP`` of its
``[MLP_1Layer]`` section (``sparsify`` as ``--kwta`` says: k-WTA with k = 4 of 4000 and dense
weights, or ReLU), ``torch.optim.SGD`` with that section's settings, ``CMNIST()`` (10 tasks
permuted with ``np.random.seed(i)``) and ``utils.pytorch_utils.train_net``. The only additions:

* data: Fashion-MNIST's idx files are converted by the original's own ``MNIST.save_mnist`` into
  the ``benchmarks/data/mnist.pkl`` it reads (``uint8 / 255`` as float32);
* ``torch.manual_seed(seed)`` before the model is built (the original seeds nothing in torch, so
  every run of it draws other initial weights and dropout masks; a seed only makes a run
  repeatable) and ``torch.set_num_threads(1)``;
* evaluation after every task as the original's ``test_multitask`` (eval mode, the test set
  padded to a multiple of 128 by repeating its first 112 images, batches of 128), recording
  both the original's figure, ``correct over the 10,112 padded images / 10,000``, and the exact
  accuracy over the 10,000 test images (the predictions on images 112.. of the padded set).

Writes a JSON file: ``acc_exact`` and ``acc_padded`` (10 x 10, row i = after task i), timings.
This script imports nothing from sparse_nte.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

IDX_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, type=Path,
                    help="extracted original code (902843e) with nupic.torch (f453d54) in nupic_torch/")
    ap.add_argument("--data", required=True, type=Path, help="folder of Fashion-MNIST's 4 idx .gz files")
    ap.add_argument("--kwta", action="store_true", help="sparsify = True (k-WTA); default ReLU")
    ap.add_argument("--seed", type=int, required=True, help="torch.manual_seed before building the model")
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    args = ap.parse_args(argv)
    src = args.src.resolve()
    for need in ("run_mnist.py", "models/simple_mlp.py", "nupic_torch/nupic/torch/modules/k_winners.py"):
        if not (src / need).exists():
            ap.error(f"--src {src}: {need} is missing; extract the original code and nupic.torch as "
                     f"this script's docstring says")
    missing = [f for f in IDX_FILES if not (args.data / f).exists()]
    if missing:
        ap.error(f"--data {args.data}: missing {', '.join(missing)}")
    out = args.out.resolve()

    # The original's benchmarks/, models/ and utils/ have no __init__.py: a folder of the same name
    # that is a regular package (this project's benchmarks/ and models/) anywhere on sys.path would
    # shadow them, so the project's folders are taken off the path.
    sys.path[:] = [str(src), str(src / "nupic_torch")] + [
        p for p in sys.path if p and not (Path(p) / "sparse_nte").is_dir()]
    os.chdir(src)   # the original reads exps/exps_params.cfg and benchmarks/data/ relative to it
    import configparser

    import torch
    from benchmarks.cmnist import CMNIST
    from benchmarks.mnist import MNIST
    from models.simple_mlp import SimpleMLP
    from utils.common import pad_data
    from utils.pytorch_utils import train_net

    for module in (CMNIST, SimpleMLP, train_net):
        if not sys.modules[module.__module__].__file__.startswith(str(src)):
            raise RuntimeError(f"{module.__module__} was imported from "
                               f"{sys.modules[module.__module__].__file__}, not from {src}")
    torch.set_num_threads(1)
    data = src / "benchmarks" / "data"
    if not (data / "mnist.pkl").exists():
        data.mkdir(parents=True, exist_ok=True)
        for f in IDX_FILES:
            if not (data / f).exists():
                os.symlink(args.data.resolve() / f, data / f)
        converter = MNIST.__new__(MNIST)
        converter.data_loc = str(data) + "/"
        converter.save_mnist()

    config = configparser.ConfigParser()
    config.read("exps/exps_params.cfg")
    c = config["MLP_1Layer"]
    torch.manual_seed(args.seed)
    model = SimpleMLP(sparsify=args.kwta, percent_on=float(c["percent_on"]),
                      k_inference_factor=float(c["k_inference_factor"]),
                      boost_strength=float(c["boost_strength"]),
                      boost_strength_factor=float(c["boost_strength_factor"]),
                      duty_cycle_period=int(c["duty_cycle_period"]),
                      num_classes=int(c["num_classes"]), hidden_layers=int(c["hidden_layers"]),
                      hidden_units=int(c["hidden_units"]), dropout=float(c["dropout"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(c["lr"]),
                                nesterov=c.getboolean("nesterov"), momentum=float(c["momentum"]),
                                weight_decay=float(c["weight_decay"]))
    criterion = torch.nn.CrossEntropyLoss()
    mb, epochs = int(c["mb_size"]), int(c["train_ep"])
    dataset = CMNIST()
    test_sets = dataset.get_full_testset()

    def evaluate() -> tuple[list[float], list[float]]:
        model.eval()
        exact, padded = [], []
        for (x, y), _ in test_sets:
            (px, py), iters = pad_data([x, y], mb)
            px, py = torch.from_numpy(px).float(), torch.from_numpy(py).long()
            with torch.no_grad():
                hits = torch.cat([model(px[i * mb:(i + 1) * mb]).argmax(1) == py[i * mb:(i + 1) * mb]
                                  for i in range(iters)])
            n_pad = px.shape[0] - y.shape[0]
            padded.append(int(hits.sum()) / y.shape[0])
            exact.append(int(hits[n_pad:].sum()) / y.shape[0])
        return exact, padded

    acc_exact, acc_padded, t_train, t_eval = [], [], 0.0, 0.0
    cpu0 = time.process_time()
    for i, (x, y, _) in enumerate(dataset):
        t0 = time.perf_counter()
        train_net(optimizer, model, criterion, mb, x, y, y, epochs)
        t1 = time.perf_counter()
        exact, padded = evaluate()
        t_eval += time.perf_counter() - t1
        t_train += t1 - t0
        acc_exact.append(exact)
        acc_padded.append(padded)
        print(f"task {i}: exact {' '.join(f'{v:.3f}' for v in exact)}", flush=True)
    result = {"kwta": args.kwta, "seed": args.seed, "acc_exact": acc_exact, "acc_padded": acc_padded,
              "train_s": t_train, "eval_s": t_eval, "cpu_s": time.process_time() - cpu0,
              "torch": torch.__version__, "threads": 1,
              "code": "sparse-dynamic-synapses 902843e, nupic.torch f453d54"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
