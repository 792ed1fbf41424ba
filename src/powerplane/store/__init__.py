"""History in an embedded database and Parquet export."""
