"""A readable report of a simulation: report.md with metric-vs-round and epsilon-vs-round plots."""

from __future__ import annotations

from pathlib import Path


def write_report(metrics: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = metrics["history"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("ndcg@10", "NDCG@10 (test)"), ("hr@10", "HR@10 (test)")):
        points = [(row["round"], row[key]) for row in history if key in row]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    if metrics.get("centralized"):
        ax.axhline(metrics["centralized"]["ndcg@10"], linestyle="--", color="grey", label="centralized NDCG@10")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("metric")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    merchants = sorted({name for row in history for name in row.get("epsilon", {})})
    for name in merchants:
        points = [(row["round"], row["epsilon"][name]) for row in history if name in row.get("epsilon", {})]
        ax.plot(*zip(*points), marker=".", label=name)
    if metrics.get("target_epsilon"):
        ax.axhline(metrics["target_epsilon"], linestyle="--", color="red", label="target")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("epsilon spent")
    if merchants and len(merchants) <= 10:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "epsilon.png", dpi=120)
    plt.close(fig)

    lines = [
        "# fedprofile simulation report",
        "",
        f"- merchants: {metrics['merchants']}, rounds completed: {metrics['rounds']}, "
        f"strategy: {metrics['run_config']['strategy']}, device: {metrics['device']}",
        "- privacy: " + _privacy_line(metrics),
        f"- final test HR@10 {_fmt(metrics['hr@10'])}, NDCG@10 {_fmt(metrics['ndcg@10'])}, MRR {_fmt(metrics['mrr'])}",
        f"- wall time {metrics['seconds']:.1f} s; published model: `{metrics['model']}`",
        "",
    ]
    if metrics.get("centralized"):
        c = metrics["centralized"]
        ratio = metrics["ndcg@10"] / c["ndcg@10"] if c["ndcg@10"] and metrics["ndcg@10"] is not None else float("nan")
        lines += [f"Centralized baseline ({c['epochs']} epochs on the union of the merchants' users"
                  + (f", epsilon {c['epsilon']:.2f}" if metrics["dp"] else "") + f"): HR@10 {_fmt(c['hr@10'])}, "
                  f"NDCG@10 {_fmt(c['ndcg@10'])}; federated / centralized NDCG@10 = {ratio:.3f}"
                  + _paired_interval(c.get("paired") or {}), ""]
    if metrics.get("served"):
        lines += _served_lines(metrics["served"])
    lines += ["![metrics](metrics.png)", "", "![epsilon](epsilon.png)", "", "## Rounds", "",
              "| round | merchants trained | refused | rejected | loss | HR@10 | NDCG@10 | max epsilon | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in history:
        eps = max(row.get("epsilon", {}).values(), default=0.0)
        lines.append(f"| {row['round']} | {len(row.get('merchants-trained', []))} | {len(row.get('refused', {}))} "
                     f"| {len(row.get('rejected', {}))} "
                     f"| {_fmt(row.get('train-loss'))} | {_fmt(row.get('hr@10'))} | {_fmt(row.get('ndcg@10'))} "
                     f"| {eps:.3f} | {row['seconds']:.1f} |")
    lines += ["", "## Epsilon per merchant (final)", "", "| merchant | epsilon | delta |", "|---|---|---|"]
    for name, eps in sorted(metrics["epsilon"].items()):
        lines.append(f"| {name} | {eps:.4f} | {metrics['delta'].get(name, 0):.2g} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _served_lines(served: dict) -> list[str]:
    """What each merchant's customers would see: its own model alone (no DP, no federation), the shared model,
    and the on-site model: the best on validation of the shared model, it fine-tuned on site and the merchant's
    own model, each maybe blended with the merchant's item adjacency (no DP: none of it leaves the merchant)."""
    plain = "no-dp" in served
    kinds = ["alone", "shared", "onsite"] + (["no-dp-shared", "no-dp-onsite"] if plain else [])
    lines = ["## What each merchant would serve (test NDCG@10 / HR@10 on its own customers)", "",
             "| merchant | alone (no DP) | shared | on-site | " + ("shared, no DP | on-site, no DP | " if plain else "")
             + "on-site choice |", "|---|---|---|---|" + ("---|---|" if plain else "") + "---|"]
    total = {**served, **{f"no-dp-{k}": v for k, v in served.get("no-dp", {}).items()}}
    rows = [(name, row) for name, row in sorted(served["merchants"].items())] + [("all", total)]
    for name, row in rows:
        fit = row.get("onsite-fit")
        note = "-" if fit is None else describe_choice(fit)
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(row[k]['ndcg@10'])} / {_fmt(row[k]['hr@10'])}"
                                                 for k in kinds) + f" | {note} |")
    lines.append("")
    for key, ratio in served["ratios"].items():
        lines.append(f"- {key} NDCG@10 = {ratio['ratio']:.3f}" + _paired_interval(ratio))
    return lines + [""]


def describe_choice(fit: dict) -> str:
    """What an on-site fit serves, in words: `its own model + 4 x fine-tuned shared, item-adjacency blend 16`."""
    chosen = fit.get("chosen", "fine-tuned" if fit["fine-tuned"] else "global")
    blend = f", item-adjacency blend {fit['adjacency-weight']:g}" if fit.get("adjacency-weight") else ""
    if chosen == "fine-tuned":
        return f"shared, fine-tuned {fit['epochs']} epoch{'s' * (fit['epochs'] != 1)}{blend}"
    if chosen == "ensemble":
        partner = "shared" if fit.get("ensemble-partner") == "global" else "fine-tuned shared"
        return f"its own model + {fit['ensemble-weight']:g} x {partner}{blend}"
    return {"global": "shared as published", "alone": "its own model"}.get(chosen, chosen) + blend


def _privacy_line(metrics: dict) -> str:
    """The privacy mode and whom it protects against, in one line (docs/privacy.md has the whole argument)."""
    if not metrics["dp"]:
        return "off (no DP): every merchant's update leaves it unnoised"
    target = f"target epsilon {metrics['target_epsilon']} per merchant's customer (user level)"
    if metrics.get("privacy") == "distributed":
        config = metrics["run_config"]
        return (f"distributed DP-SGD, {target}: each merchant adds a share of one central step's noise and the "
                f"coordinator sees only the secure sum; it holds against the coordinator, outsiders and up to "
                f"{config['colluders']} colluding merchants, while at least min-survivors minus colluders merchants "
                "in each sum are honest and the coordinator routes keys honestly (docs/privacy.md)")
    return (f"local DP-SGD, {target}: each merchant noises its own update and trusts no one (docs/privacy.md)")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _paired_interval(paired: dict) -> str:
    if paired.get("low") is None:
        return ""
    return (f" ({paired['level']:.0%} paired bootstrap interval over the same {paired['users']} test users: "
            f"{paired['low']:.3f}-{paired['high']:.3f})")
