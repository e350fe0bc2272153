"""The Flower apps (``flwr``, the optional extra ``[federated]``): a ``ClientApp`` whose train
handler is one client's round (``fcit.fit`` or ``pilora.fit``, by the job's ``kind``) and a
``ServerApp`` whose main loop is our server (``FederatedRun`` / ``PiloraRun``) with its rounds
carried by the Grid. The same two apps run under Flower's simulation engine (``simulate``, the Ray
backend) and against real SuperNodes (``flwr run`` with a ``pyproject.toml`` naming
``adaptinf_fast.federated.apps:client_app`` and a ServerApp built by ``server_app``).

A client knows which shard it is by its node config's ``partition-id`` (the simulation sets it;
a real SuperNode is started with ``--node-config "partition-id=7"``); the server asks every node
once (a ``query`` message) and then sends each sampled client's job to its node.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import torch

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ModuleNotFoundError as exc:  # the optional extra
    raise ModuleNotFoundError("federated runs on Flower need flwr: pip install 'adaptinf-fast[federated]' "
                              "(flwr[simulation])", name="flwr") from exc


def _fit_any(job: dict, arrays: dict[str, torch.Tensor]):
    if job["kind"] == "fcit":
        from .fcit import fit
    elif job["kind"] == "pilora":
        from .pilora import fit
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")
    return fit(job, arrays)


def _pack(meta: dict, arrays: dict[str, torch.Tensor]) -> RecordDict:
    """Flower's arrays carry no bfloat16: those go as float32 (exact) and are cast back on arrival."""
    bf16 = sorted(k for k, v in arrays.items() if v.dtype == torch.bfloat16)
    tensors = {k: (v.float() if k in bf16 else v).detach().cpu().contiguous() for k, v in arrays.items()}
    return RecordDict({"arrays": ArrayRecord(torch_state_dict=tensors),
                       "config": ConfigRecord({"meta": json.dumps(meta), "bf16": json.dumps(bf16)})})


def _unpack(content: RecordDict) -> tuple[dict, dict[str, torch.Tensor]]:
    arrays = dict(content["arrays"].to_torch_state_dict())
    for k in json.loads(content["config"]["bf16"]):
        arrays[k] = arrays[k].to(torch.bfloat16)
    return json.loads(content["config"]["meta"]), arrays


client_app = ClientApp()


@client_app.query()
def _who(msg: Message, context: Context) -> Message:
    return Message(content=RecordDict({"config": ConfigRecord({"client": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    meta, arrays = _unpack(msg.content)
    if int(meta["client"]) != int(context.node_config["partition-id"]):
        raise RuntimeError(f"node holds client {context.node_config['partition-id']}, the job is for {meta['client']}")
    reply_meta, reply_arrays = _fit_any(meta, arrays)
    return Message(content=_pack(reply_meta, reply_arrays), reply_to=msg)


class GridDispatch:
    """``dispatch(jobs, arrays)`` over a Flower Grid: each job to the node of its client."""

    def __init__(self, grid: Grid, clients: int, wait_s: float = 120.0):
        self.grid, self.node_of = grid, {}
        deadline = time.monotonic() + wait_s
        while not set(range(clients)) <= self.node_of.keys():
            nodes = [n for n in grid.get_node_ids() if n not in self.node_of.values()]
            if nodes:
                asks = [Message(content=RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
                for rep in grid.send_and_receive(asks):
                    if rep.has_error():
                        continue
                    c = int(rep.content["config"]["client"])
                    if not 0 <= c < clients or c in self.node_of:
                        raise RuntimeError(f"a node says it holds client {c}: partition ids must be 0..{clients - 1}, "
                                           "each on one node")
                    self.node_of[c] = rep.metadata.src_node_id
            if not set(range(clients)) <= self.node_of.keys():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(self.node_of)} of {clients} clients connected within {wait_s:.0f} s")
                time.sleep(0.2)

    def __call__(self, jobs: Sequence[dict], arrays: dict[str, torch.Tensor]) -> list:
        msgs = [Message(content=_pack(job, arrays), dst_node_id=self.node_of[job["client"]], message_type="train",
                        group_id=f"{job['stage']}-{job['round']}") for job in jobs]
        out = []
        for rep in self.grid.send_and_receive(msgs):
            if rep.has_error():
                raise RuntimeError(f"a client failed: {rep.error.reason}")
            out.append(_unpack(rep.content))
        if len(out) != len(jobs):
            raise RuntimeError(f"{len(out)} of {len(jobs)} clients replied")
        return out


def server_app(make_run: Callable[[], object], clients: int) -> ServerApp:
    """A ServerApp whose main runs ``make_run()`` (a ``FederatedRun`` or ``PiloraRun``) to the end,
    its rounds carried by the Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        make_run().run(dispatch=GridDispatch(grid, clients))

    return app


def simulate(make_run: Callable[[], object], clients: int, cpus_per_client: float = 1.0,
             gpus_per_client: float = 0.0) -> None:
    """Run a federated run under Flower's simulation engine (Ray backend): ``clients`` virtual
    SuperNodes, ``cpus_per_client`` and ``gpus_per_client`` each (how many train at once; with 0
    GPUs Ray hides the GPUs from the clients, which then train on the CPU)."""
    import logging
    import warnings

    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app(make_run, clients), client_app, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
                                       "init_args": {"include_dashboard": False, "log_to_driver": False}})


__all__ = ["GridDispatch", "client_app", "server_app", "simulate"]
