"""Raw transactions -> validated events: the per-row rules shared with scoring (`rules`), files to Parquet parts and
the manifest (`files`), and the labels file (`labels`)."""
