// promlint checks Prometheus text exposition on stdin with the linter `promtool check
// metrics` runs (client_golang's promlint): it prints one problem per line and exits 1
// when there is any, 2 when the input does not parse, 0 when it is clean.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintf(os.Stderr, "promlint: cannot parse the metrics: %v\n", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Printf("%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
