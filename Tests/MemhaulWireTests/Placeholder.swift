// placeholder until the wire tests merge
