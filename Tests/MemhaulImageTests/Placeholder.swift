// placeholder until this layer's tests merge
