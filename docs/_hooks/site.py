"""MkDocs hook of the clipped_trip site (mkdocs.yml: ``hooks: [docs/_hooks/site.py]``).

1. The committed figures (``figures/*.png`` and their ``.json`` sidecars, at the repository
   root) are added to the site as ``figures/NAME.png`` / ``figures/NAME.json`` without copying
   them into ``docs/``, and the ``<!-- gallery -->`` marker of ``gallery.md`` becomes one section
   per figure: title, what it shows, the image, the command that makes it, its parameters.
   A figure not described below still gets a section (titled by its name).
2. Every name of ``clipped_trip.__all__`` (read from ``clipped_trip/__init__.py`` with ``ast``:
   nothing is imported, JAX stays unloaded) that no reference page documents with
   ``::: clipped_trip.NAME`` is appended to ``reference/index.md``, so the API reference is
   complete even when ``__all__`` grows before the pages are sorted by hand.

Only the standard library and MkDocs itself are used; nothing touches the network.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.clipped_trip")

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "figures"
PACKAGE_INIT = ROOT / "clipped_trip" / "__init__.py"
MARKER = "<!-- gallery -->"

# name -> (title, what it shows); the order here is the gallery's order
DESCRIPTIONS = {
    "fig1": (
        "Figure 1: C-SGD vs C-HSGD vs ODE",
        "Clipped SGD (100 runs, 80% quantile bands), its homogenized SDE and the ODE at d = 500, "
        "power-law spectrum j^-0.2, lr 0.6, clip 0.4, T 15; Gaussian noise (std 0.5, with the "
        "unclipped ODE for reference) and Cauchy noise (scale 0.5, where unclipped SGD "
        "diverges). SGD's mean is within about 1.5% of the ODE.",
    ),
    "fig2": (
        "Figure 2: CCC against the clip",
        "The clipping comparison criterion at R = 3 against c for noise of std 5 (Gaussian, "
        "three-point, uniform, exponential) and Student-t laws (df 50 ... 2.1) scaled to "
        "variance 25. Gaussian noise never goes above 1; heavy tails do.",
    ),
    "fig3": (
        "Figure 3: reduction factors and CSC",
        "mu_c, G_c = nu_c / (2R + Var) and the clipping stability criterion against c.",
    ),
    "fig4": (
        "Figure 4: CSC heat maps",
        "The clipping stability criterion over (c / noise std, noise std) at R = 1.",
    ),
    "fig5": (
        "Figure 5: max CCC and max CSC against the risk",
        "The best the clip can do, as the risk R goes from 0.1 to 10 (noise std 7, q = 0.5).",
    ),
    "fig6": (
        "Figure 6: optimal clipping schedules",
        "The max-CCC schedule (Theorem 3) vs the tuned heuristic c = kappa sqrt(2R + Var) vs "
        "unclipped SGD: SGD bands with ODE lines, and the schedules c(t), lr(t) themselves.",
    ),
    "fig7": (
        "Figure 7: real data",
        "SGD over shuffles of a real data set (scikit-learn's digits offline, or CIFAR-10 with "
        "`--data DIR`) against the ODE built from its empirical covariance and residuals.",
    ),
    "dscaling": (
        "SGD-to-ODE gap against the dimension",
        "The gap for d = 1e2 ... 1e7 (exact reduced simulator) against the paper's d^-1/2 rate.",
    ),
    "minibatch": (
        "Mini-batches: per-example clipping vs clip of the mean",
        "B = 1, 4, 16, 64, 256 at the same c and lr = 0.5 B (three-point noise): SGD bands, "
        "ODE / one-step-map lines, and the final risk relative to unclipped against B. Clipping "
        "the mean loses the heavy-tail advantage as B grows; per-example clipping keeps it.",
    ),
    "critical-batch": (
        "The critical batch size",
        "Steps and samples to a target risk against B (best lr per B on the ODE / map, SGD "
        "points), both clip modes and unclipped, with the critical batch marked.",
    ),
    "privacy": (
        "DP-SGD: privacy against utility",
        "One-pass DP-SGD (power law, d = 1000, Student-t(3), B = 64, T = 10): for each epsilon "
        "the (clip, lr) minimising the ODE's final risk at a fixed sample budget, with DP-SGD "
        "itself at each optimum; the optimal clip (aggressive clipping: c -> 0 is optimal, flat "
        "to the grid edge, at small epsilon) and kappa = lr * c, the only thing that matters in "
        "the c -> 0 limit.",
    ),
    "bias": (
        "The clipping bias and the perturbation fix",
        "Non-centred data and centred exponential (skewed) noise: risk, population risk and the "
        "bias statistic <m, e> for clipped SGD with perturbations k = 0, 1, 2, 4 and unclipped "
        "SGD, SGD bands against the ODE and its fixed point; started away from x* and at x* "
        "(clipped SGD walks away from x* to the biased point).",
    ),
    "adaptive": (
        "Adaptive thresholds: quantile tracking and AutoClip",
        "Quantile tracking (slow and fast regimes), AutoClip, the max-CCC schedule, the best "
        "constant clip and unclipped SGD, each at its ODE-tuned learning rate (isotropic, "
        "d = 1000, Student-t(3) and Gaussian noise): SGD bands against the ODEs, and the "
        "threshold paths c(t).",
    ),
    "value-clipping": (
        "Value clipping and its signSGD limit",
        "Norm vs coordinate-wise (value) clipping on a diagonal power law; value clipping at "
        "tau -> 0 with lr = eta / tau against signSGD, relative to the signSGD ODE; and the "
        "effective preconditioning gamma mu_i(R) lambda_i against lambda_i (slopes 1 and 1/2).",
    ),
}


def figure_names() -> list[str]:
    """The committed figures (stems of figures/*.png), described ones first, in gallery order."""
    found = {p.stem for p in FIGURES.glob("*.png")} if FIGURES.is_dir() else set()
    ordered = [n for n in DESCRIPTIONS if n in found]
    return ordered + sorted(found - set(ordered))


def public_names() -> list[str]:
    """``clipped_trip.__all__``, read statically."""
    tree = ast.parse(PACKAGE_INIT.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]
    return []


def on_files(files, config):
    for name in figure_names():
        for ext in ("png", "json"):
            src = FIGURES / f"{name}.{ext}"
            if src.is_file() and files.get_file_from_path(f"figures/{name}.{ext}") is None:
                files.append(File.generated(config, f"figures/{name}.{ext}", abs_src_path=str(src)))
    return files


def _params_text(name: str) -> str:
    side = FIGURES / f"{name}.json"
    if not side.is_file():
        return ""
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    params = data.get("params", {}) if isinstance(data, dict) else {}
    scalars = {
        k: v for k, v in params.items() if isinstance(v, (int, float, str, bool)) and v is not None
    }
    shown = ", ".join(f"{k} = {v}" for k, v in scalars.items())
    link = f"[figures/{name}.json](figures/{name}.json)"
    if shown:
        return f"Parameters: {shown}; all of them, with the versions: {link}."
    return f"Parameters and versions: {link}."


def gallery_markdown() -> str:
    parts = []
    for name in figure_names():
        title, what = DESCRIPTIONS.get(name, (name, ""))
        parts.append(f"## {title} {{ #{name} }}\n")
        if what:
            parts.append(what + "\n")
        parts.append(f"![{title}](figures/{name}.png)\n")
        parts.append(
            "Made by\n\n```bash\n"
            f"clipped-trip reproduce {name}            # paper size, into figures/\n"
            f"clipped-trip reproduce {name} --quick    # small version, under a minute\n```\n"
        )
        params = _params_text(name)
        if params:
            parts.append(params + "\n")
    if not parts:
        return "*No figures are committed yet: run `clipped-trip reproduce all`.*\n"
    return "\n".join(parts)


def _documented(config) -> set[str]:
    docs = Path(config["docs_dir"])
    pattern = re.compile(r"^:::\s*clipped_trip\.([A-Za-z_][A-Za-z0-9_]*)\s*$", re.M)
    out = set()
    for page in (docs / "reference").glob("*.md"):
        out.update(pattern.findall(page.read_text(encoding="utf-8")))
    return out


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    if src == "gallery.md":
        if MARKER not in markdown:
            log.warning("gallery.md lost its %s marker", MARKER)
            return markdown
        return markdown.replace(MARKER, gallery_markdown())
    if src == "reference/index.md":
        missing = [n for n in public_names() if n not in _documented(config)]
        if missing:
            log.info("API reference: %d name(s) not sorted into a page: %s", len(missing), missing)
            extra = "\n\n## Not yet sorted into a page\n\n" + "\n\n".join(
                f"::: clipped_trip.{n}" for n in missing
            )
            return markdown + extra + "\n"
    return markdown
