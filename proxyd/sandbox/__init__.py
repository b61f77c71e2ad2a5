"""What ``proxyd demo`` and the kernel tests share: the fake API server (``fakeapi``) and
the network-namespace topology builder (``netns``). The proxyd core never imports this
package. Submodules are imported explicitly (``netns`` also runs as a script inside
namespaces, so this package must not import it eagerly)."""

__all__: list[str] = []
