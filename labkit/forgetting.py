"""Catastrophic forgetting, measured: what a narrow fine-tune gains in its domain and what it costs
everywhere else.

    probes, domain_train, replay_pool = forgetting_probes(P)
    before = measure(model, tok, probes)
    row = fine_tune_and_measure(labkit.load_model, domain_train, probes, before, method="full",
                                learning_rate=1e-4)
    row["domain_gain"], row["knowledge_drop"], row["general_ppl_change"]

One bundle of fixed probes is scored before and after every run: in-domain loss (held-out domain
texts), general-knowledge cloze accuracy (``labkit.probes``), perplexity on general text (a subset
kept apart from any replay data) and a word-sense probe.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np

from .data import read_jsonl
from .plots import COLORS
from .predictions import perplexity
from .probes import cloze_answers, sense_table
from .plots import LabFigure, Panel, lab_layout


@dataclass
class ForgettingProbes:
    """The fixed measurement set (JSON-serialisable)."""
    domain_eval: list          # held-out domain texts (never trained on)
    knowledge: list            # cloze items {"prompt", "answer"}
    general_eval: list         # general texts for perplexity (never used for replay)
    senses: list               # word-sense probes
    max_length: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def split_off(records, n_heldout: int, seed: int = 0):
    """``(rest, heldout)``: a seeded, disjoint split with ``n_heldout`` records held out."""
    records = list(records)
    if not 0 < n_heldout < len(records):
        raise ValueError(f"n_heldout={n_heldout}: must be between 1 and {len(records) - 1}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_heldout])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def forgetting_probes(n_domain_eval: int = 16, n_knowledge: int = 40, n_general_eval: int = 24,
                      max_length: int = 64, domain: str = "domains/code.jsonl", word: str = "function",
                      seed: int = 0):
    """``(probes, domain_train, replay_pool)`` from the lab's data files: the domain corpus split into
    training and held-out texts; a fixed, seeded subset of the general-knowledge probe; general text
    split into a perplexity set and a disjoint pool for replay."""
    domain_train, domain_eval = split_off(read_jsonl(domain, "text"), n_domain_eval, seed)
    knowledge = read_jsonl("general_knowledge.jsonl", "cloze")
    if not 0 < n_knowledge <= len(knowledge):
        raise ValueError(f"n_knowledge={n_knowledge}: must be between 1 and {len(knowledge)}")
    knowledge = random.Random(seed).sample(knowledge, n_knowledge)
    replay_pool, general_eval = split_off(read_jsonl("general_text.jsonl", "text"), n_general_eval, seed)
    senses = [p for p in read_jsonl("domains/probes.jsonl", "sense") if p["word"] == word]
    if not senses:
        raise ValueError(f"word={word!r}: no sense probes for it in domains/probes.jsonl")
    probes = ForgettingProbes(domain_eval=[r["text"] for r in domain_eval], knowledge=knowledge,
                              general_eval=[r["text"] for r in general_eval], senses=senses,
                              max_length=max_length)
    return probes, domain_train, replay_pool


def measure(model, tokenizer, probes: ForgettingProbes, batch_size: int = 8) -> dict:
    """Score the model on every probe: in-domain loss (nats/token) and perplexity, knowledge
    accuracy (0-1) and what it writes for each item (:func:`labkit.probes.cloze_answers`),
    general-text perplexity, and the sense probes' log-probabilities."""
    if not probes.knowledge:
        raise ValueError("probes.knowledge is empty: measuring forgetting needs at least one knowledge item")
    was_training = model.training
    model.eval()
    domain_ppl = perplexity(model, tokenizer, probes.domain_eval, probes.max_length, batch_size)
    answers = cloze_answers(model, tokenizer, probes.knowledge)
    result = {
        "domain_loss": math.log(domain_ppl), "domain_ppl": domain_ppl,
        "knowledge_acc": sum(a["correct"] for a in answers) / len(answers),
        "knowledge_answers": answers,
        "general_ppl": perplexity(model, tokenizer, probes.general_eval, probes.max_length, batch_size),
        "senses": sense_table(model, tokenizer, probes.senses).to_dict("records"),
    }
    model.train(was_training)
    return result


def compare(before: dict, after: dict) -> dict:
    """What the tuning gained and cost: in-domain loss gain (nats/token, > 0 is better), knowledge
    accuracy drop (points of 0-1, > 0 is forgetting), general perplexity change (ratio − 1)."""
    return {"domain_gain": before["domain_loss"] - after["domain_loss"],
            "knowledge_drop": before["knowledge_acc"] - after["knowledge_acc"],
            "general_ppl_change": after["general_ppl"] / before["general_ppl"] - 1}


def mix_replay(domain, general, share: float, total: int | None = None, seed: int = 0) -> list:
    """A shuffled training set of ``total`` records (default: as many as ``domain``) in which
    ``share`` of the records are general text (replay) and the rest domain text. General records
    are drawn without replacement while there are enough."""
    domain, general = list(domain), list(general)
    if not 0 <= share < 1:
        raise ValueError(f"share={share!r}: must be in [0, 1)")
    if not domain:
        raise ValueError("domain: no records")
    total = total or len(domain)
    n_general = round(share * total)
    if n_general and not general:
        raise ValueError("general: no records to replay")
    rng = random.Random(seed)

    def draw(pool, n):
        return rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]

    mixed = draw(domain, total - n_general) + draw(general, n_general)
    rng.shuffle(mixed)
    return mixed


def fine_tune_and_measure(load, train_data, probes: ForgettingProbes, before: dict, label: str = "",
                          replay_share: float = 0.0, replay_pool=None, plot=None, **train_kwargs) -> dict:
    """Train a fresh model (``load()`` -> (model, tok)) with ``labkit.train(**train_kwargs)``, then
    measure it. Returns a JSON-serialisable row: config, metrics after, gains/costs, losses."""
    from .training import train

    data = mix_replay(train_data, replay_pool or [], replay_share,
                      seed=train_kwargs.get("seed", 0)) if replay_share else list(train_data)
    model, tok = load()
    result = train(model, tok, data, label=label or "fine-tune", plot=plot, live=plot is not None,
                   **train_kwargs)
    after = measure(result.model, tok, probes)
    cfg = result.config.to_dict()
    row = {"label": label or f"{cfg['method']} lr={cfg['learning_rate']:.0e}",
           "method": cfg["method"], "learning_rate": cfg["learning_rate"], "steps": cfg["steps"],
           "replay_share": replay_share, "config": cfg, "stopped": result.history.stopped,
           "train_losses": result.history.losses, **{k: v for k, v in after.items()},
           **compare(before, after)}
    del model, result
    return row


def results_frame(rows, base: dict | None = None):
    """A compact table of runs (and the base model's row first, when given)."""
    import pandas as pd

    keep = ["label", "method", "learning_rate", "replay_share", "domain_loss", "knowledge_acc",
            "general_ppl", "domain_gain", "knowledge_drop", "general_ppl_change"]
    table = [{k: r.get(k) for k in keep} for r in rows]
    if base is not None:
        table.insert(0, {"label": "base model", "method": "base", "domain_loss": base["domain_loss"],
                         "knowledge_acc": base["knowledge_acc"], "general_ppl": base["general_ppl"]})
    return pd.DataFrame(table)


# --- the trade-off frontier ------------------------------------------------------------------

def frontier_figure(rows, title: str | None = None):
    """In-domain gain (x) against knowledge lost and general perplexity change (two panels); one
    marker per run, labelled by learning rate, coloured by method."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("general-knowledge accuracy lost",
                                                        "general-text perplexity change"))
    for method in sorted({r["method"] for r in rows}):
        rs = sorted([r for r in rows if r["method"] == method and not r.get("replay_share")],
                    key=lambda r: r["learning_rate"])
        if not rs:
            continue
        for col, key, scale in ((1, "knowledge_drop", 100), (2, "general_ppl_change", 100)):
            fig.add_scatter(x=[r["domain_gain"] for r in rs], y=[scale * r[key] for r in rs],
                            mode="lines+markers+text", text=[f"{r['learning_rate']:.0e}" for r in rs],
                            textposition="top center", name=method, legendgroup=method,
                            showlegend=col == 1, marker=dict(size=10, color=COLORS.get(method)),
                            row=1, col=col)
    for r in rows:
        if r.get("replay_share"):
            for col, key in ((1, "knowledge_drop"), (2, "general_ppl_change")):
                fig.add_scatter(x=[r["domain_gain"]], y=[100 * r[key]], mode="markers+text",
                                text=[r["label"]], textposition="bottom center", name=r["label"],
                                legendgroup=r["label"], showlegend=col == 1,
                                marker=dict(size=12, symbol="diamond", color=COLORS["qlora"]), row=1, col=col)
    fig.update_xaxes(title_text="in-domain gain (loss drop, nats/token)")
    fig.update_yaxes(title_text="accuracy lost (percentage points)", row=1, col=1)
    fig.update_yaxes(title_text="perplexity change (%)", row=1, col=2)
    lab_layout(fig, 420, top=80, legend_below=-0.25, title=title or frontier_title(rows))
    return LabFigure(fig)


def frontier_title(rows) -> str:
    plain = sorted([r for r in rows if not r.get("replay_share")], key=lambda r: r["learning_rate"])
    if len(plain) < 2:
        return "In-domain gain against forgetting"
    lo, hi = plain[0], plain[-1]
    return (f"From lr {lo['learning_rate']:.0e} to {hi['learning_rate']:.0e}: in-domain gain "
            f"{lo['domain_gain']:+.2f} → {hi['domain_gain']:+.2f} nats/token, knowledge lost "
            f"{100 * lo['knowledge_drop']:.0f} → {100 * hi['knowledge_drop']:.0f} points")


def matched_comparison(full_rows, other: dict) -> dict:
    """Full fine-tuning's forgetting at ``other``'s in-domain gain, interpolated along the full-FT
    frontier (linear in gain). ``inside`` says whether that gain lies within the frontier's range."""
    pts = sorted([r for r in full_rows if not r.get("replay_share")], key=lambda r: r["domain_gain"])
    if not pts:
        raise ValueError("full_rows: need at least one full fine-tuning run")
    gains = np.array([r["domain_gain"] for r in pts])
    g = other["domain_gain"]
    out = {"gain": g, "inside": bool(gains.min() <= g <= gains.max()), "other": other["label"]}
    for key in ("knowledge_drop", "general_ppl_change"):
        out[f"full_{key}"] = float(np.interp(g, gains, [r[key] for r in pts]))
        out[f"other_{key}"] = other[key]
    return out


def knowledge_verdict(run: dict, reference: dict, n_items: int) -> dict:
    """Did ``run`` lose less knowledge than ``reference``? Judged on the primary measure (knowledge
    accuracy on ``n_items`` probe items) against its sampling noise: a difference of two accuracies
    on n items has a standard error of about sqrt(2 p (1 - p) / n); within two of them (about 95%)
    the two runs cannot be told apart. Returns the difference in points lost (< 0: ``run`` lost
    fewer), the noise band and a verdict: "less", "more" or "within noise"."""
    if n_items < 1:
        raise ValueError(f"n_items={n_items}: need at least one probe item")
    p = (run["knowledge_acc"] + reference["knowledge_acc"]) / 2
    noise = 2 * math.sqrt(2 * max(p * (1 - p), 1 / n_items) / n_items)
    diff = run["knowledge_drop"] - reference["knowledge_drop"]
    verdict = "within noise" if abs(diff) <= noise else ("less" if diff < 0 else "more")
    return {"difference": diff, "noise": noise, "verdict": verdict, "n_items": n_items}


def matched_knowledge_verdict(matched: dict, before: dict, n_items: int) -> dict:
    """:func:`knowledge_verdict` for a :func:`matched_comparison`: the other method against full
    fine-tuning's forgetting at the same in-domain gain."""
    def run(drop):
        return {"knowledge_drop": drop, "knowledge_acc": before["knowledge_acc"] - drop}

    return knowledge_verdict(run(matched["other_knowledge_drop"]), run(matched["full_knowledge_drop"]), n_items)


def knowledge_sentence(name: str, run: dict, reference: dict, n_items: int) -> str:
    """One line a learner reads: knowledge lost by ``run`` against ``reference``, with the verdict."""
    v = knowledge_verdict(run, reference, n_items)
    said = {"less": "LESS forgetting", "more": "MORE forgetting",
            "within noise": "no difference this probe can see"}[v["verdict"]]
    return (f"{name}: knowledge lost {100 * run['knowledge_drop']:.0f} points vs {100 * reference['knowledge_drop']:.0f} "
            f"→ {said} (difference {100 * v['difference']:+.0f} points; noise ±{100 * v['noise']:.0f} on {n_items} items)")


def lost_facts(probes: ForgettingProbes, before: dict, runs: dict):
    """The knowledge items the base model got right and at least one run in ``runs`` (name ->
    measured row) got wrong: the prompt, the answer, and what each run writes instead (empty
    where that run still writes the answer)."""
    import pandas as pd

    rows = []
    for k, item in enumerate(probes.knowledge):
        if not before["knowledge_answers"][k]["correct"]:
            continue
        written = {name: run["knowledge_answers"][k] for name, run in runs.items()}
        if all(w["correct"] for w in written.values()):
            continue
        rows.append({"prompt": item["prompt"], "answer": item["answer"],
                     **{name: "" if w["correct"] else w["writes"] for name, w in written.items()}})
    return pd.DataFrame(rows, columns=["prompt", "answer", *runs])


# --- the word-sense probe --------------------------------------------------------------------

def sense_shift(before: dict, after: dict):
    """Per sense: mean change of log P(continuation | prompt) after tuning, separately for neutral
    prompts (shared across senses) and for prompts written for one sense."""
    import pandas as pd

    b, a = pd.DataFrame(before["senses"]), pd.DataFrame(after["senses"])
    df = b.assign(after=a["logprob"].values, change=a["logprob"].values - b["logprob"].values)
    counts = df.groupby("prompt")["sense"].transform("count")
    df["context"] = np.where(counts > 1, "neutral prompt", "sense-specific prompt")
    return (df.groupby(["sense", "context"])
              .agg(probes=("change", "size"), before=("logprob", "mean"), after=("after", "mean"),
                   change=("change", "mean"))
              .reset_index())


def neutral_winners(result: dict):
    """For each neutral prompt (several senses share it), the sense with the highest log-probability."""
    import pandas as pd

    df = pd.DataFrame(result["senses"])
    df = df[df.groupby("prompt")["sense"].transform("count") > 1]
    return df.loc[df.groupby("prompt")["logprob"].idxmax(), ["prompt", "sense"]].set_index("prompt")["sense"]


def sense_figure(before: dict, runs: dict, title: str | None = None):
    """Grouped bars: mean change of log P per sense (sense-specific prompts), one group per run."""
    fig = LabFigure()
    last = None
    for name, (after, color) in runs.items():
        s = sense_shift(before, after)
        s = s[s["context"] == "sense-specific prompt"]
        fig.add_bar(x=list(s["sense"]), y=list(s["change"]), name=name, marker_color=color)
        last = s
    if title is None and last is not None:
        worst = last.loc[last["change"].idxmin()]
        title = (f"Last run: the {worst['sense']!r} sense moved most downward "
                 f"({worst['change']:+.2f} nats) in contexts written for it")
    fig.add_hline(y=0, line_color="black", line_width=1)
    return lab_layout(fig, 380, legend_below=-0.25, title=title, barmode="group",
                      xaxis_title="sense of 'function' the context calls for",
                      yaxis_title="change in log P(continuation) (nats)")


# --- the widget ---------------------------------------------------------------------------------

class ForgettingLab:
    """Controls for one narrow fine-tune (learning rate, steps, method, replay share), a button that
    trains and measures, and a before/after figure. ``run()`` does what the button does."""

    MEASURES = {"in-domain loss": "domain_loss", "knowledge accuracy": "knowledge_acc",
                "general perplexity": "general_ppl"}   # bar label -> key of a measured row

    def __init__(self, load, train_data, probes: ForgettingProbes, before: dict, replay_pool=None,
                 learning_rate: float = 1e-4, steps: int = 10, method: str = "full",
                 **train_kwargs):
        import ipywidgets as W

        self.load, self.train_data, self.probes, self.before = load, train_data, probes, before
        self.replay_pool, self.train_kwargs, self.rows = replay_pool or [], train_kwargs, []
        style = {"description_width": "initial"}
        self.lr = W.FloatLogSlider(value=learning_rate, base=10, min=-6, max=-2, step=0.25,
                                   description="learning rate", readout_format=".0e", style=style)
        self.steps = W.IntSlider(value=steps, min=1, max=max(60, steps), description="steps", style=style)
        self.method = W.Dropdown(options=["full", "lora"], value=method, description="method")
        self.replay = W.FloatSlider(value=0.0, min=0.0, max=0.8, step=0.1, description="replay share",
                                    style=style)
        self.button = W.Button(description="fine-tune and measure", button_style="primary")
        self.output = W.Output()
        self.button.on_click(lambda _: self.run())
        self.controls = W.VBox([W.HBox([self.lr, self.steps]), W.HBox([self.method, self.replay]),
                                self.button])
        self.figure = LabFigure()
        self.figure.add_bar(x=list(self.MEASURES), y=[1.0] * len(self.MEASURES), name="base model",
                            marker_color=COLORS["base"])   # every measure ÷ itself
        lab_layout(self.figure, 340, yaxis_title="value after ÷ value before", barmode="group",
                   title="The base model (1.0 on every measure). Press the button: each run adds bars")

    def config(self) -> dict:
        return {"learning_rate": self.lr.value, "steps": self.steps.value, "method": self.method.value,
                "replay_share": self.replay.value, **self.train_kwargs}

    def run(self) -> dict:
        cfg = self.config()
        share = cfg.pop("replay_share")
        label = f"{cfg['method']} lr={cfg['learning_rate']:.0e} x{cfg['steps']}" + (
            f" replay {share:.0%}" if share else "")
        with self.output:
            row = fine_tune_and_measure(self.load, self.train_data, self.probes, self.before, label=label,
                                        replay_share=share, replay_pool=self.replay_pool, **cfg)
        self.rows.append(row)
        names, keys = list(self.MEASURES), list(self.MEASURES.values())
        with self.figure.batch_update():
            self.figure.add_bar(x=names, y=[row[k] / self.before[k] if self.before[k] else float("nan") for k in keys], name=label,
                                marker_color=COLORS.get(row["method"]))
            self.figure.layout.title = (f"{label}: in-domain loss {row['domain_gain']:+.2f} nats/token "
                                        f"better, knowledge {100 * row['knowledge_acc']:.0f}% "
                                        f"(was {100 * self.before['knowledge_acc']:.0f}%)")
        return row

    def widget(self):

        return Panel([self.controls, self.figure, self.output])
