"""Export formats: which column of a bank's export is which product field (`mapping`), the Sberbank code
dictionaries (`dictionaries`) and the calibrated synthetic export (`generate`)."""
