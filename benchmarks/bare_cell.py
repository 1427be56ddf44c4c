"""One FedAvg cell as a bare PyTorch loop: the floor a framework is compared with (bench_flower.py).

Usage: python bare_cell.py CELL.npz RESULT.json

The same arrays, initial weights, batch orders, model and FedAvg (sample-weighted mean of the
hospitals' models) as ``flower_cell.py``, with nothing else: no tracking, no framework.
Needs only torch and numpy.
"""

import json
import sys

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)
D = dict(np.load(sys.argv[1]))
SITES, ROUNDS, LR, BATCH = int(D["num_sites"]), int(D["rounds"]), float(D["lr"]), int(D["batch_size"])


def net() -> nn.Module:  # privbench's "mlp" (hidden [32]), as in flower_cell.py
    return nn.Sequential(nn.Flatten(), nn.Linear(D["x_test"].shape[1], 32), nn.ReLU(), nn.Linear(32, 2))


def main() -> None:
    model, loss_fn = net(), nn.CrossEntropyLoss()
    global_params = torch.from_numpy(D["init"]).clone()
    for rnd in range(1, ROUNDS + 1):
        updates, sizes = [], []
        for site in range(SITES):
            torch.nn.utils.vector_to_parameters(global_params.clone(), model.parameters())  # (a view otherwise: training would write into it)
            x, y = torch.from_numpy(D[f"x_{site}"]), torch.from_numpy(D[f"y_{site}"])
            order = torch.from_numpy(D[f"order_{site}_{rnd}"])
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            for start in range(0, len(y), BATCH):
                idx = order[start : start + BATCH]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
            updates.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach())
            sizes.append(len(y))
        w = torch.tensor(sizes, dtype=global_params.dtype) / sum(sizes)
        global_params = (torch.stack(updates) * w[:, None]).sum(0)
    torch.nn.utils.vector_to_parameters(global_params, model.parameters())
    with torch.no_grad():
        acc = float((model(torch.from_numpy(D["x_test"])).argmax(1).numpy() == D["y_test"]).mean())
    with open(sys.argv[2], "w") as fh:
        json.dump({"accuracy": acc}, fh)


if __name__ == "__main__":
    main()
