"""Key management and signed records (JWS) for mrx nodes."""
