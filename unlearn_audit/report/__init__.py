"""The typed record of an audit (:class:`.record.AuditReport`) and every view rendered from it: HTML, Markdown, JSON,
JUnit, the GitHub step summary, the model card and the side-by-side comparison."""
