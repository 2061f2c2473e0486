"""In headless Chromium: the Dagster UI (test_ui.py) and the HTML report (test_report.py), with the README's
pictures as tools/screenshots.py takes them."""
