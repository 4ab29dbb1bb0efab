"""Reading recorded runs: pure functions over the runs table ``mlflow.search_runs`` returns (model and link labels,
which runs count, the latest run of each cell, gains over a baseline with the runs within noise marked, rankings,
the papers' settings and claim checks, the spatial, reliability and dynamic tables). The end-of-run summary and the
paper-tables notebook share them, so both name, count and compare runs the same way; nothing here opens a store."""
