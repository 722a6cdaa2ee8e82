"""From probe outputs to a decision: scoring statistics, the audit's figures (residuals, recoveries) and the verdict."""
