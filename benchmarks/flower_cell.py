"""One FedAvg cell in Flower's simulation engine (run by bench_flower.py in the Flower venv).

Usage: python flower_cell.py CELL.npz RESULT.json

The arrays (hospital training sets, global test set, initial weights and each hospital's
batch order per round) were produced by privbench's own loader, so both tools do the same work.
Needs only torch, numpy and flwr[simulation].
"""

import json
import sys

import numpy as np
import torch
from torch import nn

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

torch.set_num_threads(1)
D = dict(np.load(sys.argv[1]))
SITES = int(D["num_sites"])
ROUNDS = int(D["rounds"])
LR = float(D["lr"])
BATCH = int(D["batch_size"])


def net() -> nn.Module:  # privbench's "mlp" (hidden [32]): Flatten, Linear, ReLU, Linear
    m = nn.Sequential(nn.Flatten(), nn.Linear(D["x_test"].shape[1], 32), nn.ReLU(), nn.Linear(32, 2))
    torch.nn.utils.vector_to_parameters(torch.from_numpy(D["init"]).clone(), m.parameters())
    return m


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    site = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    model = net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = torch.from_numpy(D[f"x_{site}"]), torch.from_numpy(D[f"y_{site}"])
    order = torch.from_numpy(D[f"order_{site}_{rnd}"])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for start in range(0, len(y), BATCH):
        idx = order[start : start + BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


server = ServerApp()
FINAL = {}


def central_eval(rnd: int, arrays: ArrayRecord) -> MetricRecord:
    model = net()
    model.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        pred = model(torch.from_numpy(D["x_test"])).argmax(1).numpy()
    acc = float((pred == D["y_test"]).mean())
    FINAL[rnd] = acc
    return MetricRecord({"accuracy": acc})


@server.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=SITES, min_available_nodes=SITES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=ROUNDS,
                   train_config=ConfigRecord({"lr": LR}), evaluate_fn=central_eval)


if __name__ == "__main__":
    run_simulation(server_app=server, client_app=client, num_supernodes=SITES,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    with open(sys.argv[2], "w") as fh:
        json.dump({"accuracy": FINAL.get(ROUNDS), "rounds_evaluated": sorted(FINAL)}, fh)
