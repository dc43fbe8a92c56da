"""What operators look at while posmon runs: the HTTP endpoints `/metrics`, `/healthz` and
`/readyz` (the series themselves belong to each loop: `monitor.scoring.metrics`,
`monitor.paging.metrics`)."""
