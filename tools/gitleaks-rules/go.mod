module gatehouse.dev/tools/gitleaks-rules

go 1.25

// No requirements: the pinned gitleaks module is fetched by version and
// checked against the hash in main.go, then built in a scratch copy.
