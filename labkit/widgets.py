"""Widgets for notebooks 01 and 02: controls (ipywidgets) over charts that redraw (``plots.LabFigure``).

    explorer = PromptExplorer(model, tok)      # type a prompt, move top-k / temperature, sample
    explorer                                   # (as the last line of a cell) shows it
    explorer.text.value = "Once upon a"        # set a control in code: the figure redraws
    seconds = explorer.update()                # one redraw, timed (the benchmarks call this)

    rerun = FineTuneRerun(load, data, contexts, targets, config)   # steps / learning-rate controls
    rerun.run()                                # what its button does: fine-tune again, redraw

Each widget exposes its controls and its ``figure`` as attributes, so tests (and curious learners)
can drive it from code.
"""
from __future__ import annotations

import html
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .plots import COLORS, LabFigure, Panel, lab_layout, top_k_bar
from .predictions import continuation_prob, next_token_logits, top_k_from_logits

LABEL = {"description_width": "initial"}   # show a control's whole label, never "temperat..."


def _shown(token: str) -> str:
    """A token with its spaces and newlines visible."""
    return repr(token)[1:-1] or "∅"


class PromptExplorer:
    """A text box, a top-k slider and a temperature slider over a bar chart of the next-token
    probabilities; a button samples a continuation token by token.

    One forward pass per new prompt; logits are cached per prompt, so moving a slider only
    recomputes a softmax."""

    def __init__(self, model, tokenizer, prompt: str = "The capital of France is", k: int = 10,
                 temperature: float = 1.0, sample_tokens: int = 8, seed: int = 0,
                 delay_s: float = 0.0, cache_size: int = 256):
        import ipywidgets as w

        if k < 1:
            raise ValueError(f"k={k}: must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        self.model, self.tokenizer = model, tokenizer
        self.seed, self.delay_s, self.cache_size = seed, delay_s, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.generator = torch.Generator().manual_seed(seed)
        self.steps: list[dict] = []     # what the last sampling did, one row per token
        self.last_update_s = 0.0

        self.text = w.Text(value=prompt, description="prompt", continuous_update=True,
                           layout=w.Layout(width="95%"), style=LABEL)
        self.top_k = w.IntSlider(value=k, min=1, max=30, description="top-k", continuous_update=True,
                                 style=LABEL)
        self.temperature = w.FloatSlider(value=temperature, min=0.1, max=3.0, step=0.05,
                                         description="temperature", continuous_update=True, style=LABEL)
        self.sample_tokens = w.IntSlider(value=sample_tokens, min=1, max=40, description="tokens to sample",
                                         style=LABEL)
        self.sample_button = w.Button(description="Sample token by token", button_style="info",
                                      layout=w.Layout(width="auto"))
        self.status = w.HTML()
        self.log = w.HTML()
        self.figure = LabFigure()
        self._sampling = False

        self.text.observe(lambda change: self._prompt_changed(), names="value")
        for control in (self.top_k, self.temperature):
            control.observe(lambda change: self.update(), names="value")
        self.sample_button.on_click(lambda _: self.sample())
        self.widget = Panel([self.text, w.HBox([self.top_k, self.temperature]),
                             w.HBox([self.sample_tokens, self.sample_button]),
                             self.status, self.figure, self.log])
        self.update()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def logits(self, prompt: str) -> torch.Tensor:
        """Next-token logits after ``prompt``: one forward pass, remembered for next time."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        logits = next_token_logits(self.model, self.tokenizer, prompt)
        self._cache[prompt] = logits
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return logits

    def clear_cache(self):
        self._cache.clear()

    def _prompt_changed(self):
        if not self._sampling:      # a new prompt typed: the last sampling's table no longer applies
            self.steps = []
            self.log.value = ""
        self.update()

    def table(self):
        """The current top-k table (token, id, probability, logit) for the text box's prompt."""
        return top_k_from_logits(self.logits(self.text.value), self.tokenizer,
                                 self.top_k.value, self.temperature.value)

    def update(self, highlight: str | None = None) -> float:
        """Redraw the chart for the current controls; returns the seconds it took."""
        start = time.perf_counter()
        prompt = self.text.value
        if not prompt:
            self.status.value = "<i>Type a prompt to see the model's next-token probabilities.</i>"
            return 0.0
        table = self.table()
        best = table.iloc[0]
        tail = prompt if len(prompt) <= 50 else "…" + prompt[-50:]
        title = (f"After {tail!r}: top guess {_shown(best.token)!r} at {best.probability:.0%} "
                 f"(T={self.temperature.value:g})")
        colors = [COLORS["after"] if t == highlight else COLORS["base"] for t in table["token"]]
        with self.figure.batch_update():
            top_k_bar(table, title=title, figure=self.figure)
            self.figure.data[0].marker.color = colors
        self.last_update_s = time.perf_counter() - start
        self.status.value = (f"top-{len(table)} tokens hold {table.probability.sum():.1%} of the "
                             f"probability · update took {self.last_update_s * 1000:.0f} ms")
        return self.last_update_s

    def sample(self, n: int | None = None) -> str:
        """Sample ``n`` tokens one at a time (top-k at the chosen temperature), appending each to the
        prompt and showing the distribution it was drawn from. Returns the sampled text."""
        n = self.sample_tokens.value if n is None else n
        if n < 1:
            raise ValueError(f"n={n}: sample at least one token")
        self.steps = []
        self._sampling = True
        try:
            return self._sample(n)
        finally:
            self._sampling = False

    def _sample(self, n: int) -> str:
        for i in range(n):
            table = self.table()
            weights = torch.tensor(table["probability"].values)
            choice = int(torch.multinomial(weights / weights.sum(), 1, generator=self.generator))
            token = table["token"].iloc[choice]
            self.update(highlight=token)
            self.steps.append({"step": i + 1, "token": token,
                               "probability": float(table["probability"].iloc[choice]),
                               "rank": choice + 1,
                               "top_3": ", ".join(f"{_shown(t)!r} {p:.0%}" for t, p in
                                                  zip(table["token"][:3], table["probability"][:3]))})
            self._show_steps()
            if self.delay_s:
                time.sleep(self.delay_s)
            self.text.value = self.text.value + token   # triggers update() for the next step
        return "".join(s["token"] for s in self.steps)

    def _show_steps(self):
        rows = "".join(
            f"<tr><td>{s['step']}</td><td><code>{html.escape(_shown(s['token']))}</code></td>"
            f"<td>{s['probability']:.1%}</td><td>{s['rank']}</td>"
            f"<td>{html.escape(s['top_3'])}</td></tr>"
            for s in self.steps)
        self.log.value = ("<table><tr><th>step</th><th>token drawn</th><th>its probability</th>"
                          f"<th>rank</th><th>top 3 at that step</th></tr>{rows}</table>")


# --- notebook 02: rerun a short fine-tune ----------------------------------------------------------

def probe_table(model, tokenizer, contexts: list[str], targets: list[str]):
    """Probability and logit of each target as the next text after each context (one row per pair).

    A one-token target's probability comes straight from the next-token softmax; a longer one's is
    the product of its tokens' probabilities."""
    import pandas as pd

    if not contexts or not targets:
        raise ValueError("probe_table needs at least one context and one target")
    rows = []
    for context in contexts:
        logits = next_token_logits(model, tokenizer, context)
        probs = F.softmax(logits, dim=-1)
        for target in targets:
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"target {target!r} has no tokens")
            p = float(probs[ids[0]]) if len(ids) == 1 else continuation_prob(model, tokenizer, context, target)
            rows.append({"context": context, "target": target, "tokens": len(ids),
                         "probability": p, "logit": float(logits[ids[0]])})
    return pd.DataFrame(rows)


def before_after_figure(before, after=None, title: str = "Next-token probability before and after",
                        after_name: str = "after full fine-tune", log_y: bool = True, figure=None):
    """Grouped bars per (context, target) pair from two :func:`probe_table` tables."""
    labels = [f"{c!r} → {_shown(t)!r}" for c, t in zip(before["context"], before["target"])]
    fig = figure if figure is not None else LabFigure()
    fig.add_bar(x=labels, y=list(before["probability"]), name="before", marker_color=COLORS["base"])
    fig.add_bar(x=labels, y=list(after["probability"]) if after is not None else [None] * len(labels),
                name=after_name, marker_color=COLORS["full"])
    return lab_layout(fig, 440, bottom=150, title=title, barmode="group", xaxis_title="context → next token",
                      yaxis_title="probability" + (" (log scale)" if log_y else ""),
                      yaxis_type="log" if log_y else "linear",
                      legend=dict(orientation="h", y=1.02, x=0))   # above: the long labels take the space below


class FineTuneRerun:
    """Steps and learning-rate controls; its button loads a fresh model, fine-tunes it on ``data``
    with ``config`` (the controls write into it) and redraws the "after" bars.

    load:     a function returning a fresh ``(model, tokenizer)`` (e.g. ``labkit.load_model``).
    before:   a :func:`probe_table` of the untouched model (computed here if not given).
    after:    a table to show until the first rerun (e.g. from the notebook's own fine-tune)."""

    def __init__(self, load, data, contexts: list[str], targets: list[str], config, before=None,
                 after=None, profile=None, max_steps: int = 60):
        import ipywidgets as w

        from .training import TrainConfig

        if not callable(load):
            raise ValueError("load must be a function returning a fresh (model, tokenizer)")
        self.load, self.data, self.contexts, self.targets = load, data, contexts, targets
        self.profile = profile
        self.config = TrainConfig.from_dict(config.to_dict()).validate()
        self.result, self.runs = None, []
        steps = self.config.steps or 1
        self.steps = w.IntSlider(value=min(steps, max_steps), min=1, max=max(max_steps, steps),
                                 description="steps", style=LABEL)
        self.learning_rate = w.FloatLogSlider(value=self.config.learning_rate, base=10, min=-6, max=-2,
                                              step=0.25, description="learning rate", readout_format=".1e",
                                              style=LABEL)
        self.run_button = w.Button(description="Fine-tune again and redraw", button_style="warning",
                                   layout=w.Layout(width="auto"))
        self.status = w.HTML("<i>Choose steps and a learning rate, then press the button.</i>")
        self.output = w.Output()
        if before is None:
            model, tok = load()
            before = probe_table(model, tok, contexts, targets)
            del model
        self.before, self.after = before, after
        self.figure = before_after_figure(before, after, title="Before and after the fine-tune")
        self.steps.observe(lambda ch: self._read_controls(), names="value")
        self.learning_rate.observe(lambda ch: self._read_controls(), names="value")
        self.run_button.on_click(lambda _: self.run())
        self.widget = Panel([w.HBox([self.steps, self.learning_rate, self.run_button]), self.status,
                             self.figure, self.output])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _read_controls(self):
        self.config.steps = int(self.steps.value)
        self.config.learning_rate = float(self.learning_rate.value)
        return self.config

    def run(self):
        """Fine-tune a fresh model with the controls' settings and redraw; returns the after table."""
        from .training import train

        cfg = self._read_controls()
        self.status.value = f"<b>training</b> {cfg.steps} steps at learning rate {cfg.learning_rate:.1e} …"
        self.output.clear_output()
        with self.output:
            model, tok = self.load()
            self.result = train(model, tok, self.data, cfg, live=False, profile=self.profile,
                                label="rerun")
        self.after = probe_table(self.result.model, tok, self.contexts, self.targets)
        with self.figure.batch_update():
            self.figure.data[1].y = list(self.after["probability"])
            self.figure.data[1].name = f"after {cfg.steps} steps at lr {cfg.learning_rate:.1e}"
        s = self.result.history.summary()
        self.runs.append({"config": cfg.to_dict(), "summary": s,
                          "after": self.after[["context", "target", "probability"]].to_dict("records")})
        self.status.value = (f"{s['steps']} steps in {s['wall_s']:.0f} s · loss {s['first_loss']:.3f} → "
                             f"{s['last_loss']:.3f} · {s['stopped']}")
        del model
        self.result.model = None   # free the weights; the tables keep what the lesson needs
        return self.after


def time_explorer(explorer: PromptExplorer, prompts=("The weather today", "The weather today is",
                                                     "The weather today is sunny"), k_values=(5, 15, 10)) -> dict:
    """Median seconds per update: for a new prompt (one forward pass) and for a slider move (cached
    logits). Used by the notebook and by ``benchmarks/``; the target is under 0.5 s for both.
    Afterwards the explorer shows the prompt and top-k it showed before."""
    import statistics

    if not prompts or not k_values:
        raise ValueError("time_explorer needs at least one prompt and one k value")
    shown = explorer.text.value, explorer.top_k.value
    explorer.clear_cache()
    new_prompt, slider = [], []
    for prompt in prompts:
        explorer.text.value = prompt if prompt != explorer.text.value else prompt + " "
        new_prompt.append(explorer.last_update_s)
    for k in k_values:
        explorer.top_k.value = k if k != explorer.top_k.value else k + 1
        slider.append(explorer.last_update_s)
    explorer.text.value, explorer.top_k.value = shown
    return {"new_prompt_s": statistics.median(new_prompt), "slider_s": statistics.median(slider),
            "prompts": len(new_prompt), "slider_moves": len(slider), "target_s": 0.5}
