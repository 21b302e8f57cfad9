"""What a run learned, as pages: `eval/report.html` for one run (job/report/build.py, made at the end of every run by
job/hooks/report.py and by `python -m job report`) and `compare.html` for several (job/report/compare.py,
`python -m job compare`).

Each page is one self-contained file: plots are matplotlib PNGs (Agg backend, its bundled DejaVu fonts) embedded as
data URIs, the CSS is inline, there is no script, and a Content-Security-Policy forbids any request. The pages are
rendered from the Jinja2 templates in job/report/templates/.

    rundata.py     the run's stored files (config, history, evaluation), read through job/storage.py; no TensorFlow
    analysis.py    numbers derived from predictions: confused pairs, superclass matrix, calibration, gallery picks
    plots.py       the figures, as PNG data URIs
    references.py  the presets' published reference figures (README's preset table)
    gallery.py     test images with their top-3 predictions and a Grad-CAM overlay (job/gradcam.py)
    page.py        the template environment
    build.py       one run's report;  compare.py  the comparison of runs
"""
