/// Marker for the layer; real code lives beside it.
enum _Layer {}
