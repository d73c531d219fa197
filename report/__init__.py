"""The audit report: evidence mapped to NIST SP 800-53 r5 controls and MITRE ATLAS techniques,
rendered as HTML, Markdown, JSON and OSCAL 1.1 assessment results."""
