"""Figures of the analyses (matplotlib, the optional ``plot`` extra): they return figures, `save_figure` writes them."""
from typing import Dict

import numpy as np

from timm_rspc.files import atomic_write

__all__ = ['PLOT_EXTRA_HINT', 'require_matplotlib', 'save_figure', 'sensitivity_figure', 'attention_stability_figure',
           'attention_grid_figure']

PLOT_EXTRA_HINT = "the plots need matplotlib: pip install 'timm-rspc[plot]'"


def require_matplotlib():
    """``matplotlib.pyplot`` on the non-interactive Agg backend unless one is already chosen (notebooks keep theirs)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_EXTRA_HINT) from None
    import sys
    if 'matplotlib.pyplot' not in sys.modules:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Write ``fig`` as a 256-colour PNG (plots need no more; a third of the size, small enough to commit) through a
    temporary file (a kill never leaves a truncated image), and close it."""
    plt = require_matplotlib()
    from PIL import Image
    fig.set_dpi(dpi)
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    quantized = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    atomic_write(path, lambda f: quantized.save(f, format='PNG', optimize=True))
    return path


def _pretty(name: str) -> str:
    return name.replace('_', ' ')


def sensitivity_figure(result: Dict):
    """Grouped bars per condition (clean, then each perturbation), one bar per model: accuracy and confidence."""
    plt = require_matplotlib()
    models = result['models']
    conditions = ['clean'] + [p['name'] for p in result['perturbations']]
    fig, axes = plt.subplots(2, 1, figsize=(max(6., 1.1 * len(conditions) + 2), 6.4), sharex=True)
    width = 0.8 / len(models)
    for ax, metric, label in zip(axes, ('accuracy', 'confidence'), ('top-1 accuracy (%)', 'true-class conf. (%)')):
        for i, (name, res) in enumerate(models.items()):
            values = [res['clean'][metric]] + [res['perturbed'][c][metric] for c in conditions[1:]]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(conditions))]
            bars = ax.bar(xs, values, width, label=name)
            ax.bar_label(bars, fmt='%.0f', fontsize=7)
        ax.set_ylabel(label)
        ax.set_ylim(0, 110)
    # one legend, above the bars (inside the axes it covered the last condition's bars)
    axes[0].legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=len(models), frameon=False)
    axes[-1].set_xticks(range(len(conditions)), [_pretty(c) for c in conditions], rotation=20, ha='right')
    fig.suptitle(f"{result['patches_per_image']}/{result['num_patches']} patches perturbed per image "
                 f"(fixed random masks, seed {result['seed']}), {result['num_images']} images", fontsize=10)
    fig.tight_layout()
    return fig


def attention_stability_figure(result: Dict):
    """Per layer: Jensen-Shannon divergence, cosine similarity (all rows solid, corrupted rows dashed) and the
    attention mass on the corrupted patches (corrupted image solid, clean image dotted), one colour per model, in the
    units of the terminal table (JS in nats x 1000, mass in percent)."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for (name, res), color in zip(result['models'].items(), colors):
        layers = res['layers']
        xs = list(range(len(layers)))

        def line(ax, key, style, label):
            scale = {'js': 1e3, 'attention': 100.}.get(key.split('_')[0], 1.)
            ax.plot(xs, [scale * layer[key] for layer in layers], style, color=color, label=label, marker='o',
                    markersize=3)
        line(axes[0], 'js', '-', f'{name}, all rows')
        line(axes[0], 'js_corrupted_rows', '--', f'{name}, corrupted rows')
        line(axes[1], 'cosine', '-', f'{name}, all rows')
        line(axes[1], 'cosine_corrupted_rows', '--', f'{name}, corrupted rows')
        line(axes[2], 'attention_to_corrupted', '-', f'{name}, corrupted image')
        line(axes[2], 'attention_to_corrupted_clean', ':', f'{name}, clean image')
    titles = ('JS divergence, clean vs corrupted (lower = stabler)', 'cosine similarity (higher = stabler)',
              'attention mass on the corrupted patches')
    units = ('JS divergence (nats x 1000)', 'cosine similarity', 'attention mass (%)')
    for ax, title, unit in zip(axes, titles, units):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('attention layer')
        ax.set_ylabel(unit)
        # below the axes: inside, the legend covered lines
        ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Attention stability: {result['patches_per_image']}/{result['num_patches']} patches replaced by "
                 f"uniform noise, {result['num_images']} images", fontsize=10)
    fig.tight_layout()
    return fig


def attention_grid_figure(maps: Dict):
    """Rows: images. Columns: clean image, corrupted image (query patch boxed yellow, corrupted patches red), then
    per model the query patch's attention (head average, chosen layer) on the clean and on the corrupted image. One
    colour scale per image row, shared by every model and both images (so that models compare), with its colourbar."""
    plt = require_matplotlib()
    from matplotlib.patches import Rectangle
    clean, corrupted = maps['clean'], maps['corrupted']
    count = clean.shape[0]
    gh, gw = maps['grid']
    patch = clean.shape[-1] // gw
    qrow, qcol = divmod(maps['query_patch'], gw)
    columns = 2 + 2 * len(maps['models'])
    fig, axes = plt.subplots(count, columns, figsize=(1.6 * columns + 0.6, 1.7 * count + 0.6), squeeze=False,
                             layout='constrained')  # makes room for the colourbars, which tight_layout cannot
    titles = ['clean', 'corrupted']
    for name, res in maps['models'].items():
        titles += [f"{name}\n{res['layer']}\nclean", f"{name}\ncorrupted"]
    keep = maps['keep']
    for i in range(count):
        images = [clean[i].permute(1, 2, 0).clamp(0, 1).numpy(), corrupted[i].permute(1, 2, 0).clamp(0, 1).numpy()]
        for j, (ax, image) in enumerate(zip(axes[i], images)):
            ax.imshow(image, interpolation='nearest')
            if j == 1:  # outline the corrupted patches
                for index in (keep[i] == 0).nonzero().flatten().tolist():
                    r, c = divmod(index, gw)
                    ax.add_patch(Rectangle((c * patch - 0.5, r * patch - 0.5), patch, patch, fill=False,
                                           edgecolor='red', linewidth=0.8))
            ax.add_patch(Rectangle((qcol * patch - 0.5, qrow * patch - 0.5), patch, patch, fill=False,
                                   edgecolor='yellow', linewidth=1.2))
        top = max(res[kind][i].max().item() for res in maps['models'].values() for kind in ('clean', 'corrupted'))
        for k, res in enumerate(maps['models'].values()):
            for j, attention in enumerate((res['clean'][i], res['corrupted'][i])):
                shown = axes[i][2 + 2 * k + j].imshow(attention.numpy(), cmap='viridis', interpolation='nearest',
                                                      vmin=0, vmax=top)
        bar = fig.colorbar(shown, ax=list(axes[i]), fraction=0.02, pad=0.01)
        bar.ax.tick_params(labelsize=6)
        if i == 0:
            bar.set_label('attention', fontsize=7)
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
    fig.suptitle(f'Attention of the boxed query patch (#{maps["query_patch"]}); one colour scale per row', fontsize=9)
    return fig
