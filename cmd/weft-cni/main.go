// Command weft-cni is weft's CNI plugin (spec 1.1.0; configs declaring 0.3.1 and later).
package main

import (
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/internal/cni"
)

func main() {
	p := &cni.Plugin{Self: filepath.Base(os.Args[0])}
	skel.PluginMainFuncs(p.Funcs(), version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "weft-cni: weft's CNI plugin")
}
