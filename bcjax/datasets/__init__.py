"""BreakHis data: the TFDS builder, patient-grouped splits and synthetic trees."""
