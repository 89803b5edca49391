package cli

import "github.com/spf13/cobra"

func newLabCmd() *cobra.Command {
	lab := &cobra.Command{Use: "lab", Short: "Build weft clusters out of network namespaces on this machine"}
	return lab
}
