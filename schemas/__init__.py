"""The mrx message set: XSDs, the XML codec and the identifiers it checks."""
