"""What people read: accuracy against the labels images carry (``evaluation``), the static HTML
report (``report``), its charts (``charts``), image thumbnails (``thumbnails``) and Markdown built
from user data for the Dagster UI (``markdown``), and the lines ``make run`` ends with (``summary``).
"""
