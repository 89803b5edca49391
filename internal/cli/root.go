// Package cli is the `weft` command line.
package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// ExitError carries an exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }

// NewRoot builds the command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "weft",
		Short:         "weft: container networking",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newStatusCmd(), newPodCmd(), newLabCmd(), newSubnetCmd(), newMTUCmd(), newNetworkCmd(), newClusterCmd(), newServiceCmd(), newApplyCmd(), newDNSCmd(), newBGPCmd(), newPolicyCmd(), newNamespaceCmd(), newIngressCmd())
	// A malformed flag value is bad input: exit code 2, one line naming it.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &ExitError{Code: 2, Err: err} })
	return root
}

// Main runs the CLI and returns the process exit code.
func Main(args []string) int {
	root := NewRoot()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		if msg := err.Error(); msg != "" { // "": the message was printed already
			fmt.Fprintln(os.Stderr, "weft:", msg)
		}
		if e, ok := err.(*ExitError); ok {
			return e.Code
		}
		if strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") {
			return 2
		}
		return 1
	}
	return 0
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(withEmptyLists(v))
}
