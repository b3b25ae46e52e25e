"""SavedModel export for TF Serving: signatures with validated inputs and work limits."""
