"""What notebook 06 shows of RLHF and DPO: the widget to try the reward model, GRPO's live curves,
the figures that compare the stages, and the verdict in words.

The stages themselves (sampling, the reward model, GRPO, DPO, scoring) are in ``labkit.rlhf``,
which also offers everything here (``rlhf.verdict(...)``), so a notebook imports one module. This
module needs nothing from that one: the widget gets the reward model as a scoring function.
"""
from __future__ import annotations

from .plots import LabFigure, Panel, lab_layout

METHOD_COLORS = {"base": "#7f7f7f", "GRPO": "#17becf", "DPO": "#e377c2", "reward": "#ff7f0e",
                 "chosen": "#2ca02c", "rejected": "#d62728"}


def words(text: str) -> int:
    """An answer's length in words: the measure the lesson's target (shorter answers) is read in."""
    return len(text.split())


class RewardWidget:
    """Type a prompt and two responses; the bars show the reward model's score for each.
    ``score(prompt, responses)`` returns one score per response (``labkit.rlhf.reward_widget``
    passes the reward model's)."""

    def __init__(self, score, prompt: str = "What is a fjord?",
                 a: str = "A fjord is a long, narrow sea inlet between steep cliffs, carved by glaciers.",
                 b: str = ("Oh, great question! So, well, fjords are kind of a big topic, and honestly there "
                           "is a lot to say about them, so let me start with a little story first...")):
        import ipywidgets as W

        self.score = score
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="95%"))
        self.response_a = W.Textarea(value=a, description="A", layout=W.Layout(width="95%", height="70px"),
                                     continuous_update=False)
        self.response_b = W.Textarea(value=b, description="B", layout=W.Layout(width="95%", height="70px"),
                                     continuous_update=False)
        self.prompt.continuous_update = False
        self.figure = LabFigure()
        self.figure.add_bar(x=["A", "B"], y=[0, 0], marker_color=[METHOD_COLORS["chosen"]] * 2)
        lab_layout(self.figure, 300, xaxis_title="response", yaxis_title="reward (model score, no unit)")
        for w in (self.prompt, self.response_a, self.response_b):
            w.observe(lambda _: self.update(), names="value")
        self.view = Panel([self.prompt, self.response_a, self.response_b, self.figure])
        self.update()

    def update(self) -> list[float]:
        """Score both responses; the preferred one is drawn in the "chosen" colour."""
        a, b = self.response_a.value, self.response_b.value
        if not a.strip() or not b.strip():
            with self.figure.batch_update():
                self.figure.layout.title = "Type both responses"
            return []
        scores = self.score(self.prompt.value, [a, b])
        winner = "A" if scores[0] > scores[1] else "B" if scores[1] > scores[0] else "neither"
        colors = [METHOD_COLORS["chosen"] if winner in (name, "neither") else METHOD_COLORS["rejected"]
                  for name in ("A", "B")]
        with self.figure.batch_update():
            self.figure.data[0].y = scores
            self.figure.data[0].marker.color = colors
            self.figure.layout.title = (f"The reward model prefers {winner}: A {scores[0]:.2f} vs B {scores[1]:.2f} "
                                        f"({words(a)} vs {words(b)} words)")
        return scores

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)


class RLCurves:
    """GRPO's reward, KL-to-reference and completion length per step (three panels), drawn as the
    rows come (call it with each row the trainer logs)."""

    PANELS = (("reward", "mean reward"), ("kl", "KL to reference (nats/token)"),
              ("completions/mean_length", "completion length (tokens)"))

    def __init__(self, title: str = "GRPO: reward, KL and length per step"):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in self.PANELS])
        for i, (key, _) in enumerate(self.PANELS, start=1):
            fig.add_scatter(x=[], y=[], mode="lines+markers", name=key, row=1, col=i,
                            line=dict(color=METHOD_COLORS["GRPO"]))
            fig.update_xaxes(title_text="optimizer step", row=1, col=i)
        lab_layout(fig, 320, top=80, left=50, title=title, showlegend=False)
        self.figure = LabFigure(fig)

    def __call__(self, row: dict):
        with self.figure.batch_update():
            for trace, (key, _) in zip(self.figure.data, self.PANELS):
                if key in row:
                    trace.x = tuple(trace.x or ()) + (row["step"],)
                    trace.y = tuple(trace.y or ()) + (row[key],)


def accuracy_figure(before: dict, after: dict):
    """Two bars: held-out pairwise accuracy before and after reward-model training."""
    import plotly.graph_objects as go

    fig = LabFigure(go.Bar(x=["before training", "after training"], y=[before["accuracy"], after["accuracy"]],
                           marker_color=[METHOD_COLORS["base"], METHOD_COLORS["reward"]],
                           text=[f"{before['accuracy']:.0%}", f"{after['accuracy']:.0%}"], textposition="outside"))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance (50%)")
    verb = "rose" if after["accuracy"] > before["accuracy"] else "did not rise"
    return lab_layout(fig, 340, title=f"Held-out pairwise accuracy {verb}: {before['accuracy']:.0%} -> "
                                      f"{after['accuracy']:.0%} ({after['pairs']} pairs)",
                      yaxis_title="pairs ranked right (share)", xaxis_title="reward model", yaxis_range=[0, 1.1])


def comparison_figure(summary, title: str | None = None):
    """Bars: mean reward and mean length per method (``rlhf.compare_policies``' summary), in the
    lab's colours."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["reward model's mean score", "mean answer length (words)"])
    colors = [METHOD_COLORS.get(m, "#ff7f0e") for m in summary["method"]]
    fig.add_bar(x=list(summary["method"]), y=list(summary["mean reward"]), marker_color=colors, row=1, col=1)
    fig.add_bar(x=list(summary["method"]), y=list(summary["mean words"]), marker_color=colors, row=1, col=2)
    fig.update_yaxes(title_text="reward (no unit)", row=1, col=1)
    fig.update_yaxes(title_text="words", row=1, col=2)
    fig.update_xaxes(title_text="policy", row=1, col=1)
    fig.update_xaxes(title_text="policy", row=1, col=2)
    if title is None:
        best = summary.loc[summary["mean reward"].idxmax(), "method"]
        title = f"On held-out prompts the highest mean reward is {best}'s"
    lab_layout(fig, 360, top=80, title=title, showlegend=False)
    return LabFigure(fig)


def verdict(summary, steps: dict, profile: str, answers=None, clipped: dict | None = None) -> str:
    """Plain-language conclusions from ``rlhf.compare_policies``' summary, each method against
    the base model: did the reward go up and the answers get at least 10% shorter, by more than the
    noise of this many prompts (with ``answers``, its per-prompt table), and if not, why not.
    ``clipped`` (method -> share of its training samples cut at the completion limit, GRPO's
    ``completions/clipped_ratio``) names the limit that kept a method from learning to stop sooner."""
    from .claims import paired_noise

    base = summary.set_index("method").loc["base"]
    lines = []
    if profile == "smoke":
        lines.append("smoke profile: 1-2 steps per stage, so these numbers mean nothing; "
                     "run with LABKIT_PROFILE=cpu to see a real result.")
    for name, row in summary.set_index("method").iterrows():
        if name == "base":
            continue
        d_reward, d_words = row["mean reward"] - base["mean reward"], row["mean words"] - base["mean words"]
        noise_r = noise_w = 0.0
        if answers is not None and len(answers) > 1:
            noise_r = paired_noise(answers[f"{name} reward"], answers["base reward"])
            noise_w = paired_noise(answers[f"{name} words"], answers["base words"])
        shorter = d_words < -max(0.1 * base["mean words"], noise_w)
        line = (f"{name}: mean reward {base['mean reward']:+.2f} -> {row['mean reward']:+.2f} ({d_reward:+.2f}"
                + (f", noise ±{noise_r:.2f}" if noise_r else "") + "), "
                f"length {base['mean words']:.1f} -> {row['mean words']:.1f} words ({d_words:+.1f}"
                + (f", noise ±{noise_w:.1f}" if noise_w else "") + "), "
                f"{row['training time (s)']:.0f} s of training. ")
        if d_reward > noise_r and shorter:
            line += "It moved the answers towards the target: higher reward and at least 10% fewer words."
        elif shorter:
            line += "Its answers are clearly shorter, but the reward did not rise by more than the noise."
        elif d_reward > noise_r:
            line += "The reward rose, but the answers are not clearly shorter (under 10% fewer words, or within noise)."
        else:
            why = [f"only {steps.get(name, '?')} optimizer steps"]
            if (clipped or {}).get(name, 0) > 0.9:
                why.append(f"{clipped[name]:.0%} of its training samples were cut at the completion limit, so it "
                           "never saw a shorter answer end and earn more")
            if base["finished answers"] == 0 and row["finished answers"] == 0:
                why.append("every answer still runs into the max_new_tokens limit, so its length can only fall "
                           "once the model learns to stop early")
            line += "It did NOT clearly improve the target here: " + "; ".join(why) + "."
        lines.append(line)
    return "\n".join(lines)
