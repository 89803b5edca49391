// Command weft is weft's command line.
package main

import (
	"os"

	"github.com/weftnet/weft/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
