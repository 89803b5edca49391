package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"

	"github.com/weftnet/weft/internal/config"
)

// delegate runs the configured IPAM plugin for verb; for ADD it returns its result.
//
// weft-cni execs the delegate itself rather than through libcni's invoke package, which
// would link OpenTelemetry into a binary that is exec'd on every pod start.
func delegate(conf *config.NetConf, args *skel.CmdArgs, verb string) (*current.Result, error) {
	typ := conf.IPAM.Type
	bin, err := findPlugin(typ, args.Path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	cmd := exec.Command(bin)
	cmd.Stdin = bytes.NewReader(args.StdinData)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+verb)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if runErr != nil {
		var e types.Error
		if json.Unmarshal(stdout.Bytes(), &e) == nil && e.Msg != "" {
			e.Msg = "IPAM plugin " + typ + ": " + e.Msg
			return nil, &e
		}
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("IPAM plugin %s %s failed: %v: %s", typ, verb, runErr, strings.TrimSpace(stderr.String())), "")
	}
	if verb != "ADD" {
		return nil, nil
	}
	r, err := create.CreateFromBytes(stdout.Bytes())
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "result of IPAM plugin "+typ+": "+err.Error(), "")
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "result of IPAM plugin "+typ+": "+err.Error(), "")
	}
	if len(res.IPs) == 0 {
		_, _ = delegate(conf, args, "DEL")
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "IPAM plugin "+typ+" returned no address", "")
	}
	return res, nil
}

func findPlugin(name, path string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) {
		return "", fmt.Errorf("ipam.type %q is not a plugin name", name)
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("IPAM plugin %q not found in CNI_PATH %q", name, path)
}
