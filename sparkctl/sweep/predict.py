"""explain's prediction for one layout at one load: the decode rate per user and
in total, with the load spread evenly over the layout's copies of the model
(DP engines or replicas), each copy predicted as `sparkctl explain` would."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from sparkctl.errors import InputError
from sparkctl.layouts import Layout
from sparkctl.perf.hardware import Hardware
from sparkctl.perf.model_config import ModelShape, load_config, parse_model
from sparkctl.perf.predict import Scenario, predict
from sparkctl.perf.quant import kv_bytes, plan_for
from sparkctl.playbook import Playbook


@dataclass(frozen=True)
class Predicted:
    tok_s_per_user: float
    output_throughput: float


@dataclass(frozen=True)
class Predictor:
    model: ModelShape
    hardware: Hardware

    def at(self, layout: Layout, concurrency: int, input_len: int | None, output_len: int | None) -> Predicted:
        copies = layout.dp * layout.replicas
        batch = max(1, math.ceil(concurrency / copies))
        context = (input_len or 1024) + (output_len or 0) // 2
        scenario = Scenario(model=self.model, plan=plan_for(self.model, None), hardware=self.hardware,
                            tp=layout.tp, pp=layout.pp, concurrency=batch, context=context, kv_bytes=kv_bytes("bf16"),
                            output_len=output_len, prompt_len=input_len)
        per_user = predict(scenario).decode_tok_s_per_user
        return Predicted(per_user, per_user * concurrency)


def predictor_for(playbook: Playbook, hw: Hardware) -> tuple[Predictor | None, str | None]:
    """A predictor from the model's config.json on this machine, or None and why not."""
    path = os.path.join(playbook.model, "config.json")
    if not playbook.model_is_path or not os.path.isfile(path):
        return None, f"no prediction: {path} is not on this machine (explain needs the model's config.json)"
    try:
        config, where = load_config(path)
        return Predictor(parse_model(config, where), hw), None
    except InputError as exc:
        return None, f"no prediction: {exc.message}"
