module zeroserve.dev/hack/pause

go 1.22
