"""What models read: the per-customer sequences table and vocabularies (`table`), the evaluation split (`splits`),
padded batches (`batches`) and the GBDT's per-customer aggregates (`features`)."""
