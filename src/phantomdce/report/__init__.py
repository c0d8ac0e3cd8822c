"""Study reports: verdicts on recommendations, figures, HTML and Markdown."""
