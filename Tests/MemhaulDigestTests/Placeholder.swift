// This layer's tests arrive with the layer.
