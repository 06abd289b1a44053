const OPERATIONS = {
  add: (a, b) => a + b,
  subtract: (a, b) => a - b,
  multiply: (a, b) => a * b,
  divide: (a, b) => {
    if (b === 0) throw new RangeError('division by zero');
    return a / b;
  },
};

exports.handler = async (event) => {
  const { operation = 'add', values } = event.params;
  const apply = OPERATIONS[operation];
  if (!apply) {
    throw new TypeError(`unknown operation '${operation}': expected add, subtract, multiply or divide`);
  }
  if (!Array.isArray(values) || values.length === 0 || !values.every(Number.isFinite)) {
    throw new TypeError('values must be a non-empty array of numbers');
  }
  return { operation, result: values.reduce(apply) };
};
