"""The doctor's verdict: which check shows a pipeline fault, and the fix; and the printed report."""

from __future__ import annotations

from typing import Any

FRAMES_AGREEMENT = 0.95  # token agreement below this: the policy tells stored frames from raw ones
PARITY_ATOL = 1e-5
DTYPE_AGREEMENT = 0.9  # bf16 changing more action tokens than this is more than rounding
HOLD_ATOL = 1e-3  # drift beyond the exact command's, in the probe's units (SO-101: metres)
OVER_SHARE = 0.01  # frames losing more than max_error of a dimension's range
REPLAY_SHORTFALL = 0.05  # a scripted expert has marginal episodes: one in 30 may fail on any tiny error


def verdict(checks: dict[str, Any]) -> dict[str, Any]:
    """``faults``: one line per failed check, each with its fix; ``verdict``: the one-line summary."""
    faults = []
    rt = checks.get("round_trip", {})
    if rt.get("frames_over_share", 0) > OVER_SHARE:
        bad = [d["name"] for d in rt["dims"] if d["over_share"] > OVER_SHARE]
        cause = ("the bins are too coarse: raise model.bins" if rt["frames_clipped_share"] <= OVER_SHARE else
                 "normalization clips them: fine-tune again with model.normalization auto (the default)"
                 if rt["normalization"] != "auto" else "they lie outside the checkpoint's training statistics: "
                 "train on data that covers them, or check that this is the data it was trained on")
        faults.append(f"round trip: {rt['frames_over_share']:.0%} of frames lose more than {rt['max_error_of_range']:.0%} "
                      f"of a dimension's range ({', '.join(bad)}); {cause}")
    rp = checks.get("replay", {})
    if "skipped" not in rp and rp:
        n = len(rp["episodes"])
        if rp["exact_successes"] - rp["round_trip_successes"] > REPLAY_SHORTFALL * n:
            cause = ("normalization clips actions (see the round trip)" if rt.get("frames_clipped_share", 0) > OVER_SHARE
                     else "the bins are too coarse for this robot's expert: raise model.bins")
            faults.append(f"replay: round-tripped expert actions succeed {rp['round_trip_successes']}/{n}, the exact "
                          f"ones {rp['exact_successes']}/{n}: the round trip alone caps success; {cause}")
        drift, exact = rp.get("hold_drift_round_trip"), rp.get("hold_drift_exact")
        if drift is not None and drift > exact + HOLD_ATOL:
            faults.append(f"hold: holding the data's still command for {rp['hold_steps']} steps moves the arm "
                          f"{drift:.4g} ({rp['probe']}) after the round trip, {exact:.4g} exact: zero does not decode "
                          "to 0; fine-tune again (new checkpoints decode the bin holding 0 to exactly 0)")
    fr = checks.get("frames", {})
    if "skipped" not in fr and fr and fr["token_agreement"] < FRAMES_AGREEMENT:
        faults.append(f"frames: the policy agrees on {fr['token_agreement']:.0%} of tokens between stored and raw frames "
                      f"(pixels differ by {fr['pixel_mean']:.2f} on average, {fr['pixel_max']} at most): store frames "
                      "losslessly (`vla data generate` does by default) or send the server what it was trained on")
    pa = checks.get("parity", {})
    if "skipped" not in pa and pa and not pa["max_abs_diff"] <= PARITY_ATOL:
        faults.append(f"parity: the server's actions differ from in-process ones by up to {pa['max_abs_diff']:.3g}: "
                      "serve the same checkpoint and send lossless (png) images")
    dp = checks.get("dtype_parity", {})
    if "skipped" not in dp and dp and dp["token_agreement"] < DTYPE_AGREEMENT:
        faults.append(f"bf16: the policy in bf16 agrees with fp32 on only {dp['token_agreement']:.0%} of action tokens "
                      f"(chunk L1 {dp['l1']:.3g}): serve it with --dtype float32")
    of = checks.get("overfit", {})
    if "skipped" not in of and of:
        if not of["memorized"]:
            faults.append(f"memorize: token accuracy {of['token_accuracy']} after {of['steps']} steps on one episode "
                          f"(needs >= 0.99): raise --overfit-steps, or look for labels the model cannot see")
        elif not of["replayed"]:
            faults.append(f"replay of a memorized episode: diverged at step {of['first_divergence_step']} by "
                          f"{of['max_deviation_of_range']:.0%} of the range ({of['mode']}): the loop feeds the "
                          "policy something other than its training inputs")
    summary = ("pipeline consistent: the policy needs more training or data" if not faults
               else "pipeline fault: " + "; ".join(f.split(":")[0] for f in faults))
    return {"faults": faults, "verdict": summary}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"vla doctor: {report['model'] or 'no model (fine-tuning defaults)'}"]
    for r in report["datasets"]:
        lines += ["", f"== {r['data']} (embodiment {r['embodiment']}; {r['episodes']} episodes: the checkpoint's "
                      "training split where its recipe names this data)"]
        c = r["checks"]
        rt = c["round_trip"]
        lines.append(f"round trip ({rt['normalization']} normalization, {rt['tokenizer'].get('kind')} "
                     f"{rt['tokenizer'].get('bins', '')}, exact zero {'on' if rt['snap_zero'] else 'off'}): "
                     f"{rt['frames']} frames of {rt['episodes']} episodes")
        lines.append(f"  {'action':>16} {'min':>9} {'max':>9} {'clipped':>8} {'mean err':>9} {'max err':>9} "
                     f"{'>' + format(rt['max_error_of_range'], '.0%') + ' range':>11}")
        for d in rt["dims"]:
            lines.append(f"  {d['name'][:16]:>16} {d['min']:9.4g} {d['max']:9.4g} {d['clipped_share']:8.1%} "
                         f"{d['mean_error']:9.2g} {d['max_error']:9.2g} {d['over_share']:11.1%}")
        rp = c["replay"]
        if "skipped" in rp:
            lines.append(f"replay: skipped ({rp['skipped']})")
        else:
            n = len(rp["episodes"])
            hold = ("no still command in the data" if rp["hold_drift_exact"] is None else
                    f"{rp['hold_steps']}-step hold drift exact {rp['hold_drift_exact']:.4g}, round trip "
                    f"{rp['hold_drift_round_trip']:.4g}")
            lines.append(f"replay in {rp['env']}: exact {rp['exact_successes']}/{n}, round trip "
                         f"{rp['round_trip_successes']}/{n}; {hold}; max deviation {rp['max_deviation']:.4g} ({rp['probe']})")
        fr = c["frames"]
        lines.append(f"frames: skipped ({fr['skipped']})" if "skipped" in fr else
                     f"frames ({'lossless' if fr['lossless_video'] else 'lossy'} video): pixels differ by "
                     f"{fr['pixel_mean']:.2f} mean / {fr['pixel_max']} max; token agreement {fr['token_agreement']:.1%}, "
                     f"chunk L1 {fr['l1']:.4g}")
        tr = c["tracking"]
        lines.append(f"expert tracking: skipped ({tr['skipped']})" if "skipped" in tr else
                     f"expert tracking (the expert drives, {len(tr['episodes'])} episodes): the policy's chunks are off by "
                     f"{tr['mean_error_of_range']:.1%} of the range on average; by third of the task "
                     + " / ".join("n/a" if v is None else f"{v:.1%}" for v in tr["by_third"]))
        pa = c["parity"]
        lines.append(f"parity: skipped ({pa['skipped']})" if "skipped" in pa else
                     f"parity: max |server - in-process| {pa['max_abs_diff']:.3g} over {pa['frames']} frames, "
                     f"{pa['identical_frames']}/{pa['frames']} identical")
        dp = c.get("dtype_parity", {"skipped": "not run"})
        lines.append(f"bf16 vs fp32: skipped ({dp['skipped']})" if "skipped" in dp else
                     f"bf16 vs fp32 (in-process, {dp['frames']} frames): token agreement {dp['token_agreement']:.1%}, "
                     f"chunk L1 {dp['l1']:.3g} ({dp['l1_normalized']:.3g} normalized)")
        of = c["overfit"]
        if "skipped" in of:
            lines.append(f"memorize and replay: skipped ({of['skipped']})")
        else:
            acc = "n/a" if of["token_accuracy"] is None else f"{of['token_accuracy']:.3f}"
            where = ("no divergence" if of["first_divergence_step"] is None else
                     f"first divergence at step {of['first_divergence_step']}")
            lines.append(f"memorize and replay (episode {of['episode']}, {of['steps']} steps): token accuracy {acc}; "
                         f"{of['mode']} {'success' if of.get('success', of['replayed']) else 'failure'}, {where}, max "
                         f"deviation {of['max_deviation_of_range']:.1%} of the range -> {'PASS' if of['passed'] else 'FAIL'}")
        lines += [f"  fault: {f}" for f in r["faults"]]
        lines.append(f"verdict: {r['verdict']}")
    lines += ["", "overall: " + ("pipeline consistent: the policy needs more training or data" if report["consistent"]
                                 else f"pipeline fault ({len(report['faults'])} finding(s) above)")]
    return "\n".join(lines)


def markdown_summary(report: dict[str, Any]) -> str:
    """The report as a model-card section: one row per dataset, the verdict, and the command."""
    rows = []
    for r in report["datasets"]:
        c = r["checks"]
        rt, rp, fr, pa = c["round_trip"], c["replay"], c["frames"], c["parity"]
        worst = max(rt["dims"], key=lambda d: d["max_error"] / max(d["max"] - d["min"], 1e-12))
        span = max(worst["max"] - worst["min"], 1e-12)
        n = len(rp.get("episodes", []))
        rows.append([
            r["embodiment"], rt["normalization"], f"{rt['frames_clipped_share']:.1%}",
            f"{worst['max_error'] / span:.2%} ({worst['name']})",
            "—" if "skipped" in rp else f"{rp['round_trip_successes']}/{n} (exact {rp['exact_successes']}/{n})",
            "—" if "skipped" in rp or rp["hold_drift_round_trip"] is None else
            f"{rp['hold_drift_round_trip'] * 1e3:.1f} mm" if rp["probe"].endswith("(m)") else f"{rp['hold_drift_round_trip']:.3g}",
            "—" if "skipped" in fr else f"{fr['token_agreement']:.1%}",
            "—" if "skipped" in pa else f"{pa['max_abs_diff']:.2g}",
            r["verdict"]])
    header = ["embodiment", "normalization", "frames clipped", "max round-trip error (of range)",
              "expert replay after round trip", f"{report['datasets'][0]['checks']['replay'].get('hold_steps', 48)}-step hold drift",
              "token agreement, stored vs raw frames", "server vs in-process", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    lines += ["", f"Measured with `{report.get('command', 'vla doctor')}` on the training data (each check is "
                  "described in the package's docs/doctor.md)."]
    return "\n".join(lines)
